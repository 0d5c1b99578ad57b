"""The HTTP side: the FastAPI app, and the port through which it sees the engine."""
