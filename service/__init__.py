"""The HTTP service (FastAPI). Its app factory arrives with the REST service issue; nothing here yet."""
