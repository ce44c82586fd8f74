"""The continual knowledge store: one student kept up to date from a growing folder of documents.

`update_store` (seal-tt update) absorbs what is new, `store_status` (seal-tt status) shows what is held, and
`pipeline.ask` answers with the store's current student. See `layout` for the folder, `state` for its records,
`update` for one update (`pending` for the update in progress), `strategies` for merge, replay, library and joint,
`student` for the student in memory, `metrics` for the forgetting measures.
"""

from pipeline.store.status import store_status
from pipeline.store.update import update_store

__all__ = ["store_status", "update_store"]
