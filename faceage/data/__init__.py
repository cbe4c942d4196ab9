"""Data: the demo faces, reading folders and archives, decoding, finding faces, ingest, the manifest, the split."""
