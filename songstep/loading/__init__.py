"""The only code that reads weights (principle 4).

- `checkpoint`: DiT checkpoint directories (single file or shards, official or diffusers layout):
  meta-device build, safetensors with `assign=True`, every key and shape verified.
- `hub`: hub downloads with pinned revisions, a lock file and checksums.

No pickle, no `trust_remote_code`.
"""
