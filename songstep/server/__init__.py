"""songstep's HTTP server (the `[server]` extra: FastAPI, uvicorn, pydantic, python-multipart,
prometheus-client). Import `songstep.server.app.create_app`; this package imports nothing heavy."""
