"""`seal-tt serve`: a real server process on localhost, asked with the official `openai` client (and httpx where the
client cannot send what is tested): chat, streaming, the models list, bad requests, the API key, a full queue,
updates committed while it serves (the next request answers from them, none from a state not yet committed),
routing for a library store and a per-document run, and SIGTERM finishing the requests in flight."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from pipeline.cli import main  # noqa: E402

DOCS = {
    "velmora": ("Velmora is a river town. Its bridge, built in 1702, is made of grey stone.",
                [("What is the bridge in Velmora made of?", "grey stone")]),
    "orrin": ("Orrin Lake is a cold lake in the hills. Its ferry is run by Mara Vell.",
              [("Who runs the ferry on Orrin Lake?", "Mara Vell")]),
    "kaldor": ("The Kaldor engine was built in 1911 by Ivo Brant in Tessel.",
               [("Who built the Kaldor engine?", "Ivo Brant")]),
    "pellam": ("Pellam Hall is a library in Dorne. It holds the Ashgrove maps, drawn by Tera Quill.",
               [("Who drew the Ashgrove maps?", "Tera Quill")]),
    "sorrel": ("The Sorrel line is a railway from Kest to Amber Bay, opened in 1888.",
               [("When did the Sorrel line open?", "1888")]),
}
FAST = ["--set", "student.train.epochs=1", "--set", "student.eval.max_new_tokens=4",
        "--set", "student.lora.r=4", "--set", "student.lora.alpha=8"]
KEY = "test-key-123"
QUESTION = "Who built the Kaldor engine?"


def cli(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code
    return 0


def write_docs(root: Path, names: list[str]) -> tuple[Path, Path, Path]:
    folder = root / "docs"
    folder.mkdir(parents=True, exist_ok=True)
    qs, edits = [], []
    for name in names:
        text, questions = DOCS[name]
        (folder / f"{name}.txt").write_text(text)
        qs += [{"document": name, "question": q, "answer": a} for q, a in questions]
        edits.append({"document": name, "completion": text + "\n" + " ".join(a for _, a in questions)})
    (root / "questions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in qs))
    (root / "edits.jsonl").write_text("".join(json.dumps(x) + "\n" for x in edits))
    return folder, root / "questions.jsonl", root / "edits.jsonl"


def update(store: Path, root: Path, names: list[str], student: Path, strategy: str = "merge") -> None:
    docs, q, e = write_docs(root, names)
    code = cli("update", "--store", store, "--docs", docs, "--questions", q, "--edits", e, "--student", student,
               "--strategy", strategy, "--quiet", *FAST)
    assert code == 0


def committed(store: Path) -> int:
    """The store's last accepted update, as a reader of its committed state.json sees it now."""
    state = json.loads((store / "state.json").read_text())
    return max([u["number"] for u in state["updates"] if u["accepted"]], default=0)


class Server:
    """`seal-tt serve` as a subprocess on a free port, ready once /health answers."""

    def __init__(self, tmp: Path, *args, env: dict | None = None):
        self.out, self.err = tmp / "serve.out", tmp / "serve.err"
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--port", "0", *map(str, args)],
                                     stdout=open(self.out, "w"), stderr=open(self.err, "w"), env=full_env)
        self.url = None

    def wait_ready(self, timeout: float = 240) -> "Server":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited {self.proc.returncode}: {self.err.read_text()[-2000:]}")
            m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", self.out.read_text())
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                try:
                    if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"serve did not start in {timeout} s: {self.err.read_text()[-2000:]}")

    def client(self, key: str | None = KEY, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=120, **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="module")
def merge_server(tiny_models, tmp_path_factory):
    """A merge store with one update, served with an API key from the environment and a queue of 4."""
    root = tmp_path_factory.mktemp("serve_merge")
    store = root / "kb"
    update(store, root, ["velmora", "orrin"], tiny_models["llama"])
    server = Server(root, "--store", store, "--queue-size", 4, "--max-tokens-limit", 64,
                    env={"SEAL_TT_API_KEY": KEY}).wait_ready()
    yield server, store, root, tiny_models["llama"]
    assert server.stop() == 0


def ask(client, content=QUESTION, **kw):
    return client.chat.completions.create(model="kb", messages=[{"role": "user", "content": content}],
                                          max_tokens=kw.pop("max_tokens", 8), **kw)


# --------------------------------------------------------------------------------------------- the basics
def test_chat_models_streaming_and_what_answered(merge_server):
    server, store, _, _ = merge_server
    client = server.client()
    assert [m.id for m in client.models.list().data] == ["kb"]
    resp = ask(client)
    assert resp.model == "kb" and resp.object == "chat.completion"
    assert resp.system_fingerprint == f"seal-tt-store-u{committed(store)}"
    tag = resp.model_extra["seal_tt"]
    assert tag["update"] == committed(store) and tag["strategy"] == "merge"
    assert sorted(tag["documents"]) == ["orrin", "velmora"]
    assert resp.usage.completion_tokens <= 8 and resp.choices[0].finish_reason in ("stop", "length")
    # greedy by default: the same answer twice, and streamed as whole
    assert ask(client).choices[0].message.content == resp.choices[0].message.content
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == resp.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == resp.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == resp.usage.completion_tokens
    assert all(c.model_extra["seal_tt"]["update"] == tag["update"] for c in chunks)
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "kb", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                            "stream": True}, timeout=60) as r:
        lines = [x for x in r.iter_lines() if x]
    assert r.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"
    # a conversation, rendered with the chat template
    convo = client.chat.completions.create(model="kb", max_tokens=4, messages=[
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Where is Velmora?"},
        {"role": "assistant", "content": "On a river."}, {"role": "user", "content": QUESTION}])
    assert convo.usage.prompt_tokens > resp.usage.prompt_tokens


def test_sampling_stop_and_limits_are_honoured(merge_server):
    server, _, _, _ = merge_server
    client = server.client()
    greedy = ask(client, max_tokens=16).choices[0].message.content
    a = ask(client, max_tokens=16, temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
    b = ask(client, max_tokens=16, temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
    others = {ask(client, max_tokens=16, temperature=1.5, seed=s).choices[0].message.content for s in range(3)}
    assert a == b and others - {greedy}, "seeded sampling repeats itself and differs from greedy"
    if len(greedy) > 2:
        stop = greedy[1:3]
        cut = ask(client, max_tokens=16, stop=[stop])
        assert cut.choices[0].message.content == greedy[:greedy.find(stop)]
        assert cut.choices[0].finish_reason == "stop"
    assert ask(client, max_tokens=1).usage.completion_tokens == 1


@pytest.mark.parametrize("extra, status, param", [
    ({"model": "not-this-one"}, 404, "model"),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
    ({"max_tokens": 65}, 400, "max_tokens"),
    ({"n": 2}, 400, "n"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, 400, "tools"),
    ({"response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"temperature": 3}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"frobnicate": 1}, 400, "frobnicate"),
    ({"messages": [{"role": "user", "content": "lake " * 3000}]}, 400, "messages"),  # past the 2048-token context
])
def test_bad_requests_are_4xx_with_an_openai_error_and_the_server_stays_up(merge_server, extra, status, param):
    server, _, _, _ = merge_server
    body = {"model": "kb", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]
    assert ask(server.client(), max_tokens=2).choices  # still serving


def test_the_client_sees_openai_errors_malformed_json_and_the_api_key(merge_server):
    server, _, _, _ = merge_server
    with pytest.raises(openai.BadRequestError) as exc:
        ask(server.client(), n=2)
    assert exc.value.status_code == 400 and exc.value.param == "n"
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"model": "kb", "messages": [',
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        ask(server.client(key="wrong"))
    r = httpx.get(server.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # open, for supervisors


def test_a_full_queue_is_a_503_with_retry_after_never_a_crash(merge_server):
    server, _, _, _ = merge_server
    results = []

    def one():
        r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                       json={"model": "kb", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 64})
        results.append(r)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert set(codes) == {200, 503} and codes.count(200) >= 5, codes  # 1 answering + 4 queued at the least
    busy = [r for r in results if r.status_code == 503]
    assert all(int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "queue_full" for r in busy)
    assert ask(server.client(), max_tokens=2).choices


# ---------------------------------------------------------------------------------------------- hot reload
def test_a_committed_update_is_answered_from_the_next_request_and_a_failed_one_changes_nothing(merge_server):
    from pipeline.ask import open_store
    from pipeline.serve.generate import Sampling, complete, render

    server, store, root, student = merge_server
    client = server.client()
    before = ask(client, max_tokens=12)
    update(store, root, ["velmora", "orrin", "kaldor"], student)  # commits while the server runs
    after = ask(client, max_tokens=12)
    assert after.model_extra["seal_tt"]["update"] == committed(store) > before.model_extra["seal_tt"]["update"]
    assert "kaldor" in after.model_extra["seal_tt"]["documents"]
    # The server folded the new update into the weights it held; a fresh load of the store answers the same.
    engine = open_store(store).student.engine
    fresh = complete(engine.model, engine.tokenizer, render(engine.tokenizer, [{"role": "user", "content": QUESTION}]),
                     Sampling(12))
    assert after.choices[0].message.content == fresh.text
    # What a crashed update leaves (its work in progress, an update folder state.json does not name) is not served.
    (store / ".pending").mkdir(exist_ok=True)
    (store / ".pending" / "job.json").write_text("{}")
    shutil.copytree(store / "updates" / "0002", store / "updates" / "0009")
    again = ask(client, max_tokens=12)
    assert again.system_fingerprint == after.system_fingerprint and again.choices[0].message.content == fresh.text
    shutil.rmtree(store / "updates" / "0009")
    shutil.rmtree(store / ".pending")


def test_load_while_two_updates_commit_fails_nothing_and_tags_only_committed_updates(merge_server):
    server, store, root, student = merge_server
    client = server.client()
    records, errors = [], []

    def worker(k):
        for i in range(25):
            low = committed(store)
            try:
                resp = ask(client, f"{QUESTION} ({k}.{i})", max_tokens=3)
            except Exception as err:  # noqa: BLE001 - counted, the assertion below names them
                errors.append(repr(err))
                continue
            records.append((low, resp.model_extra["seal_tt"]["update"], committed(store)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    start = committed(store)
    for t in threads:
        t.start()
    names = list(DOCS)[:3]
    for extra in ("pellam", "sorrel"):
        names.append(extra)
        update(store, root, names, student)
    for t in threads:
        t.join()
    assert errors == [] and len(records) == 100
    # each answer comes from a state committed by the time it came back, and not older than the one committed
    # when it was sent
    assert all(low <= tag <= high for low, tag, high in records), [r for r in records if not r[0] <= r[1] <= r[2]]
    assert committed(store) == start + 2
    assert len({tag for _, tag, _ in records}) >= 2, "the load ran across at least one commit"
    assert ask(client, max_tokens=2).model_extra["seal_tt"]["update"] == start + 2


def test_a_store_replaced_by_another_is_loaded_anew_and_a_damaged_state_keeps_the_old_one(tiny_models, tmp_path,
                                                                                          capsys):
    """In process (the resident the server holds): a history that does not extend what is loaded is reloaded from
    the base, never folded on top; a state.json that cannot be read leaves the loaded state answering."""
    from pipeline.ask import open_store
    from pipeline.serve.generate import Sampling, complete, render
    from pipeline.serve.resident import Resident

    store = tmp_path / "kb"
    update(store, tmp_path / "one", ["velmora"], tiny_models["llama"])
    resident = Resident(store=store)

    def answer(res):
        with res.answering(QUESTION) as tag:
            ids = render(res.tokenizer, [{"role": "user", "content": QUESTION}])
            return complete(res.model, res.tokenizer, ids, Sampling(8)).text, tag["seal_tt"]

    first, tag = answer(resident)
    assert tag["documents"] == ["velmora"]
    shutil.move(store, tmp_path / "old")
    update(store, tmp_path / "two", ["kaldor"], tiny_models["llama"])  # another store, also at update 1
    resident.refresh(resident.committed())
    text, tag = answer(resident)
    assert tag["documents"] == ["kaldor"] and tag["update"] == 1
    engine = open_store(store).student.engine
    fresh = complete(engine.model, engine.tokenizer, render(engine.tokenizer, [{"role": "user", "content": QUESTION}]),
                     Sampling(8))
    assert text == fresh.text
    (store / "state.json").write_text("{ torn")
    resident.refresh(resident.committed())
    assert answer(resident) == (text, tag)
    assert "could not be loaded" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- other sources, stop
def test_a_library_store_and_a_per_document_run_route_and_sigterm_finishes_in_flight(tiny_models, tmp_path):
    lib = tmp_path / "lib"
    update(lib, tmp_path / "l", ["velmora", "orrin"], tiny_models["qwen2"], "library")
    update(lib, tmp_path / "l", ["velmora", "orrin", "kaldor"], tiny_models["qwen2"], "library")
    docs, q, e = write_docs(tmp_path / "r", ["velmora", "kaldor"])
    run = tmp_path / "run"
    assert cli("adapt-student", "--docs", docs, "--edits", e, "--questions", q, "--student", tiny_models["llama"],
               "--output", run, "--quiet", "--per-document", *FAST) == 0
    # an adapter with its student (in process: the same resident a server holds) names the run it came from
    from pipeline.serve.resident import Resident

    (folder,) = [p for p in (run / "adapters").iterdir() if "kaldor" in p.name]
    alone = Resident(adapter=folder, student=str(tiny_models["llama"]))
    with alone.answering(QUESTION) as tag:
        assert alone.model_id == folder.name and tag["fingerprint"] == "seal-tt-adapter"
        assert tag["seal_tt"]["adapter"] == str(folder) and tag["seal_tt"]["update"] is None
    del alone
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    servers = [Server(tmp_path / "a", "--store", lib, "--model-name", "lib"), Server(tmp_path / "b", "--run", run)]
    try:
        library, per_doc = [s.wait_ready() for s in servers]
        resp = library.client().chat.completions.create(model="lib", max_tokens=4,
                                                        messages=[{"role": "user", "content": QUESTION}])
        tag = resp.model_extra["seal_tt"]
        assert tag["adapter"] == "update 2" and tag["documents"] == ["kaldor"]
        assert resp.system_fingerprint == "seal-tt-store-u2-a2"
        assert library.stop() == 0

        client = per_doc.client()
        resp = client.chat.completions.create(model="run", max_tokens=4, messages=[{"role": "user", "content": QUESTION}])
        assert resp.model_extra["seal_tt"]["documents"] == ["kaldor"] and "kaldor" in resp.model_extra["seal_tt"]["adapter"]
        # SIGTERM with one answer decoding and two queued: all three finish, then the server exits cleanly.
        results = []

        def one():
            results.append(client.chat.completions.create(model="run", max_tokens=200, messages=[
                {"role": "user", "content": QUESTION}]).usage.completion_tokens)

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while httpx.get(per_doc.url + "/health").json()["queued"] < 2 and time.time() < deadline and not results:
            time.sleep(0.02)
        assert not results, "an answer finished before the other two were queued: nothing was in flight"
        per_doc.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert len(results) == 3
        assert per_doc.proc.wait(60) == 0
    finally:
        for s in servers:
            s.stop()


def test_without_the_serve_extra_it_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None; from pipeline.cli import main; "
            f"main(['serve', '--store', {str(tmp_path)!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: seal-tt serve needs FastAPI and uvicorn: pip install 'seal-tt[serve]'"]


def test_a_port_in_use_is_a_one_line_error_before_any_model_loads(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--store", str(tmp_path / "none"),
                            "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]
