"""`seal-tt serve`: the kept-current student behind an OpenAI-compatible HTTP API.

    from pipeline.serve.resident import Resident
    from pipeline.serve.app import create_app, listen, serve
    serve(Resident(store="kb/"), listen("127.0.0.1", 8000))   # or create_app(...) in your own ASGI server

`protocol` checks requests and shapes responses (no web framework needed), `generate` decodes one chat answer,
`resident` holds the student and reloads committed store state, `worker` owns the model on one thread, `app` is the
FastAPI layer (imported only when serving: FastAPI and uvicorn are the optional extra `seal-tt[serve]`).
"""
