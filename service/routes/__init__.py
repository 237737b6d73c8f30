"""The service's routes, one APIRouter per concern: search, rerank (ours and ``/v1/rerank``), admin, ops."""
