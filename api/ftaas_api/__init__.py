"""The ftaas API service: the FastAPI app, its routes, auth, errors and uploads."""
