"""The continual knowledge store: one student kept up to date from a growing folder of documents.

`update_store` (seal-tt update) absorbs what is new, `store_status` (seal-tt status) shows what is held, and
`pipeline.ask` answers with the store's current student. See `layout` for the folder, `update` for one update,
`student` for how each strategy applies the updates, `metrics` for the forgetting measures.
"""

from pipeline.store.status import store_status
from pipeline.store.update import update_store

__all__ = ["store_status", "update_store"]
