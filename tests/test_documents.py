"""Loading documents and questions: every accepted format, and one clear UserError for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.documents import Document, Question, load_documents, load_questions
from core.errors import UserError

GK_DATA = Path(__file__).resolve().parents[2] / "shared/data/seal/general-knowledge/data"
SYNTHETIC_TRAIN = GK_DATA / "synthetic_data/train/iter0_train.json"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def write_json(path: Path, data) -> Path:
    return write(path, json.dumps(data))


def write_jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def user_error(call, *args, **kwargs) -> str:
    """Run `call`, expect a UserError, and return its message after checking it is one line."""
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------ text files


def test_txt_file_is_one_document_named_by_its_stem(tmp_path):
    path = write(tmp_path / "moon_landing.txt", "\n  Apollo 11 landed in 1969.\n\n")
    [doc] = load_documents([path])
    assert doc == Document(id="moon_landing", title="moon_landing", text="Apollo 11 landed in 1969.", questions=[])


def test_md_file_and_str_paths(tmp_path):
    path = write(tmp_path / "notes.MD", "# Notes\n\nSome text.")
    [doc] = load_documents([str(path)])
    assert (doc.id, doc.text) == ("notes", "# Notes\n\nSome text.")


def test_a_single_path_need_not_be_wrapped_in_a_list(tmp_path):
    path = write(tmp_path / "a.txt", "alpha")
    assert [d.id for d in load_documents(path)] == ["a"]
    assert [d.id for d in load_documents(str(path))] == ["a"]


def test_byte_order_mark_is_not_part_of_the_text(tmp_path):
    path = write(tmp_path / "bom.txt", "\ufeffhello".encode("utf-8"))
    assert load_documents([path])[0].text == "hello"


def test_folder_is_read_recursively_in_sorted_order(tmp_path):
    folder = tmp_path / "docs"
    write(folder / "b.txt", "bravo")
    write(folder / "a.md", "alpha")
    write(folder / "sub" / "c.txt", "charlie")
    write(folder / "sub" / "a.txt", "alpha again")  # same stem as a.md: the relative path keeps ids unique
    write(folder / "data.json", "[]")  # not a text document: ignored, not parsed
    write(folder / "image.png", b"\x89PNG\xff\xfe")
    write(folder / ".hidden.txt", "skip me")
    write(folder / ".ipynb_checkpoints" / "b-checkpoint.txt", "skip me too")
    docs = load_documents([folder])
    assert [d.id for d in docs] == ["a", "b", "sub/a", "sub/c"]
    assert [d.title for d in docs] == ["a", "b", "a", "c"]
    assert [d.text for d in docs] == ["alpha", "bravo", "alpha again", "charlie"]


# ------------------------------------------------------------------------------------------ JSON inputs


def test_json_list_of_document_objects(tmp_path):
    path = write_json(
        tmp_path / "docs.json",
        [
            {"text": "t0"},
            {"context": "t1", "title": "Second"},
            {"passage": "t2", "id": "custom"},
            {"document": "t3", "id": 7},
        ],
    )
    docs = load_documents([path])
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("docs-0", "", "t0"),
        ("docs-1", "Second", "t1"),
        ("custom", "", "t2"),
        ("7", "", "t3"),
    ]


def test_text_keys_are_tried_in_documented_order(tmp_path):
    path = write_json(tmp_path / "d.json", [{"document": "last", "context": "second", "text": "first"}])
    assert load_documents([path])[0].text == "first"


def test_json_text_is_kept_verbatim(tmp_path):
    path = write_json(tmp_path / "d.json", [{"text": "  padded\n"}])
    assert load_documents([path])[0].text == "  padded\n"


def test_questions_with_answer_or_answers(tmp_path):
    path = write_json(
        tmp_path / "qa.json",
        [
            {
                "context": "Paris is the capital of France.",
                "questions": [
                    {"question": "Capital of France?", "answer": "Paris"},
                    {"question": "Which country?", "answers": ["France", "the French Republic", "France"]},
                    {"question": "Both?", "answer": "Paris", "answers": ["Paris, France"]},
                    {"question": "Official SQuAD answers?", "answers": [{"text": "Paris", "answer_start": 0}]},
                    {"question": "A year?", "answer": 1999},
                ],
            }
        ],
    )
    [doc] = load_documents([path])
    assert doc.questions == [
        Question("Capital of France?", ("Paris",)),
        Question("Which country?", ("France", "the French Republic")),  # annotator repeats merged
        Question("Both?", ("Paris", "Paris, France")),
        Question("Official SQuAD answers?", ("Paris",)),
        Question("A year?", ("1999",)),
    ]


def test_question_is_hashable_and_frozen():
    q = Question("q?", ("a",))
    assert {q: 1}[Question("q?", ("a",))] == 1
    with pytest.raises(AttributeError):
        q.question = "other"  # type: ignore[misc]


def test_squad_grouped_format_fixture(tmp_path):
    path = write_json(
        tmp_path / "squad_val.json",
        [
            {
                "title": "Super_Bowl_50",
                "context": "Super Bowl 50 was an American football game.",
                "questions": [{"question": "What sport?", "answer": "American football"}],
            },
            {"title": "Super_Bowl_50", "context": "The game was played in 2016.", "questions": []},
        ],
    )
    docs = load_documents([path])
    assert [d.id for d in docs] == ["squad_val-0", "squad_val-1"]  # titles repeat, ids do not
    assert docs[0].questions == [Question("What sport?", ("American football",))]
    assert docs[1].questions == []


def test_official_squad_layout(tmp_path):
    path = write_json(
        tmp_path / "dev-v1.1.json",
        {
            "version": "1.1",
            "data": [
                {
                    "title": "Normans",
                    "paragraphs": [
                        {
                            "context": "The Normans were in Normandy.",
                            "qas": [
                                {
                                    "id": "q1",
                                    "question": "Where were the Normans?",
                                    "answers": [{"text": "Normandy", "answer_start": 20}] * 3,
                                }
                            ],
                        },
                        {"context": "Second paragraph.", "qas": []},
                    ],
                }
            ],
        },
    )
    docs = load_documents([path])
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("dev-v1.1-0", "Normans", "The Normans were in Normandy."),
        ("dev-v1.1-1", "Normans", "Second paragraph."),
    ]
    assert docs[0].questions == [Question("Where were the Normans?", ("Normandy",))]


def test_real_squad_file_first_passages(squad_file):
    raw = json.loads(squad_file.read_text(encoding="utf-8"))
    docs = load_documents([squad_file], limit=3)
    assert len(docs) == 3
    for i, (doc, record) in enumerate(zip(docs, raw)):
        assert doc.id == f"squad_val-{i}"
        assert doc.title == record["title"]
        assert doc.text == record["context"]
        assert [q.question for q in doc.questions] == [q["question"] for q in record["questions"]]
        assert [q.answers for q in doc.questions] == [(q["answer"],) for q in record["questions"]]
    assert docs[0].title == "Super Bowl 50"
    assert docs[0].questions[0] == Question(
        "Which NFL team represented the AFC at Super Bowl 50?", ("Denver Broncos",)
    )


def test_real_squad_file_loads_whole(squad_file):
    docs = load_documents([squad_file])
    assert len(docs) == 2067
    assert sum(len(d.questions) for d in docs) == 10570


def test_paper_synthetic_data_loads_as_documents():
    if not SYNTHETIC_TRAIN.exists():
        pytest.skip(f"shared data not found at {SYNTHETIC_TRAIN}")
    raw = json.loads(SYNTHETIC_TRAIN.read_text(encoding="utf-8"))
    assert {"completions", "prompt"} <= set(raw[0])  # the extra keys this test is about
    docs = load_documents([SYNTHETIC_TRAIN])
    assert len(docs) == len(raw) == 100
    assert docs[0].id == "iter0_train-0"
    assert docs[0].title == raw[0]["title"] == "Estonian language"
    assert docs[0].text == raw[0]["context"]
    assert all(d.questions for d in docs)
    assert docs[0].questions[0].answers == (raw[0]["questions"][0]["answer"],)


def test_jsonl_one_document_per_line(tmp_path):
    path = write(
        tmp_path / "docs.jsonl",
        '{"text": "first", "id": "x"}\n\n   \n{"context": "second", "title": "T",'
        ' "questions": [{"question": "q?", "answers": ["a"]}]}\n',
    )
    docs = load_documents([path])
    assert [(d.id, d.title, d.text) for d in docs] == [("x", "", "first"), ("docs-1", "T", "second")]
    assert docs[1].questions == [Question("q?", ("a",))]


def test_mixed_inputs_keep_their_order(tmp_path):
    txt = write(tmp_path / "z.txt", "zulu")
    jsonl = write_jsonl(tmp_path / "m.jsonl", [{"text": "mike"}])
    folder = tmp_path / "folder"
    write(folder / "a.txt", "alpha")
    docs = load_documents([txt, jsonl, folder])
    assert [d.id for d in docs] == ["z", "m-0", "a"]


def test_limit_keeps_the_first_documents(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}"} for i in range(5)])
    assert [d.id for d in load_documents([path], limit=2)] == ["d-0", "d-1"]
    assert load_documents([path], limit=0) == []
    assert len(load_documents([path], limit=99)) == 5
    assert len(load_documents([path], limit=None)) == 5


def test_limit_does_not_hide_a_broken_later_input(tmp_path):
    good = write(tmp_path / "good.txt", "fine")
    bad = write(tmp_path / "bad.txt", "   ")
    assert "bad.txt" in user_error(load_documents, [good, bad], limit=1)


@pytest.mark.parametrize("limit", [-1, 1.5, True, "3"])
def test_bad_limit(tmp_path, limit):
    path = write(tmp_path / "a.txt", "alpha")
    assert "limit" in user_error(load_documents, [path], limit=limit)


# ------------------------------------------------------------------------------------------- bad inputs


def test_no_paths():
    assert "no document paths" in user_error(load_documents, [])


def test_missing_path(tmp_path):
    message = user_error(load_documents, [tmp_path / "nope.txt"])
    assert "nope.txt" in message and "no such file" in message


def test_unsupported_suffix(tmp_path):
    path = write(tmp_path / "table.csv", "a,b")
    message = user_error(load_documents, [path])
    assert "table.csv" in message and ".csv" in message and ".jsonl" in message


def test_folder_without_documents(tmp_path):
    folder = tmp_path / "empty"
    write(folder / "data.json", "[]")
    write(folder / ".secret.txt", "hidden")
    message = user_error(load_documents, [folder])
    assert str(folder) in message and "no .txt or .md" in message


@pytest.mark.parametrize("content", ["", "   \n\t\n"])
def test_empty_text_file(tmp_path, content):
    path = write(tmp_path / "blank.txt", content)
    message = user_error(load_documents, [path])
    assert "blank.txt" in message and "empty" in message


def test_empty_file_inside_folder_is_named(tmp_path):
    write(tmp_path / "docs" / "ok.txt", "fine")
    write(tmp_path / "docs" / "sub" / "hollow.md", "\n")
    assert "hollow.md" in user_error(load_documents, [tmp_path / "docs"])


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.json", "latin1.jsonl"])
def test_non_utf8_file_names_file_and_byte_offset(tmp_path, name):
    path = write(tmp_path / name, "caf\u00e9 ok".encode("latin-1"))
    message = user_error(load_documents, [path])
    assert name in message and "UTF-8" in message and "byte offset 3" in message and "0xe9" in message


def test_malformed_json_reports_line_and_column(tmp_path):
    path = write(tmp_path / "broken.json", '[\n  {"text": "a"},\n  {"text": "b",}\n]')
    message = user_error(load_documents, [path])
    assert "broken.json" in message and "line 3" in message and "column" in message


def test_malformed_jsonl_reports_file_line(tmp_path):
    path = write(tmp_path / "broken.jsonl", '{"text": "a"}\n\n{"text": "b"\n')
    message = user_error(load_documents, [path])
    assert "broken.jsonl line 3" in message and "column 13" in message


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"text": "a"}, "expected a JSON list"),
        ([], "no documents"),
        (["just a string"], "[0]: expected a document object"),
        ([{"text": "ok"}, {"title": "no text"}], "[1]: document has no text"),
        ([{"text": 42}], "[0]: 'text' must be a string"),
        ([{"context": ["a", "b"]}], "'context' must be a string"),
        ([{"text": "  \n "}], "[0]: document is empty"),
        ([{"text": "ok", "title": 3}], "'title' must be a string"),
        ([{"text": "ok", "id": True}], "'id' must be a string or an integer"),
        ([{"text": "ok", "id": " "}], "'id' is blank"),
        ([{"text": "ok", "questions": "q?"}], "'questions' must be a list"),
        ([{"text": "ok", "questions": ["q?"]}], "questions[0]: expected a question object"),
        ([{"text": "ok", "questions": [{"answer": "a"}]}], "questions[0]: 'question' must be a string, got missing"),
        ([{"text": "ok", "questions": [{"question": 5, "answer": "a"}]}], "'question' must be a string"),
        ([{"text": "ok", "questions": [{"question": " ", "answer": "a"}]}], "question is blank"),
        ([{"text": "ok", "questions": [{"question": "q?"}]}], "questions[0]: question has no answer"),
        ([{"text": "ok", "questions": [{"question": "q?", "answer": ""}]}], "question has no answer"),
        ([{"text": "ok", "questions": [{"question": "q?", "answers": []}]}], "question has no answer"),
        ([{"text": "ok", "questions": [{"question": "q?", "answers": "a"}]}], "'answers' must be a list"),
        ([{"text": "ok", "questions": [{"question": "q?", "answers": [["a"]]}]}], "answers[0] must be a string"),
        ([{"text": "ok", "questions": [{"question": "q?", "answer": False}]}], "'answer' must be a string"),
    ],
)
def test_bad_json_records(tmp_path, data, fragment):
    path = write_json(tmp_path / "bad.json", data)
    message = user_error(load_documents, [path])
    assert "bad.json" in message and fragment in message


def test_bad_jsonl_record_names_its_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n[1, 2]\n')
    assert "bad.jsonl line 2: expected a document object" in user_error(load_documents, [path])
    path = write(tmp_path / "bad2.jsonl", '{"text": "ok"}\n\n{"passage": ""}\n')
    assert "bad2.jsonl line 3: document is empty" in user_error(load_documents, [path])


def test_empty_jsonl(tmp_path):
    path = write(tmp_path / "empty.jsonl", "\n \n")
    assert "empty.jsonl: no documents" in user_error(load_documents, [path])


def test_bad_official_squad_layout(tmp_path):
    path = write_json(tmp_path / "dev.json", {"data": [{"title": "T", "paragraphs": {"context": "x"}}]})
    assert "dev.json data[0]: 'paragraphs' must be a list" in user_error(load_documents, [path])
    path = write_json(tmp_path / "dev2.json", {"data": [{"title": "T", "paragraphs": [{"qas": []}]}]})
    assert "dev2.json data[0].paragraphs[0]: document has no text" in user_error(load_documents, [path])


def test_duplicate_ids_across_inputs(tmp_path):
    a = write_json(tmp_path / "a.json", [{"id": "shared", "text": "one"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "other", "text": "two"}, {"id": "shared", "text": "three"}])
    message = user_error(load_documents, [a, b])
    assert "'shared'" in message and "b.jsonl line 2" in message and "a.json [0]" in message


def test_duplicate_ids_within_a_file(tmp_path):
    path = write_json(tmp_path / "dup.json", [{"id": "x", "text": "1"}, {"id": "x", "text": "2"}])
    assert "dup.json [1]: duplicate document id 'x'" in user_error(load_documents, [path])


def test_same_file_twice_is_a_duplicate(tmp_path):
    path = write(tmp_path / "a.txt", "alpha")
    assert "duplicate document id 'a'" in user_error(load_documents, [path, path])


def test_txt_stem_colliding_with_json_id(tmp_path):
    txt = write(tmp_path / "notes.txt", "alpha")
    js = write_json(tmp_path / "more.json", [{"id": "notes", "text": "beta"}])
    assert "'notes'" in user_error(load_documents, [txt, js])


# ------------------------------------------------------------------------------------------- questions


@pytest.fixture
def three_docs(tmp_path):
    path = write_json(
        tmp_path / "docs.json",
        [
            {"id": "fr", "title": "France", "text": "Paris is the capital of France.",
             "questions": [{"question": "Capital?", "answer": "Paris"}]},
            {"id": "de", "title": "Germany", "text": "Berlin is the capital of Germany."},
            {"id": "de2", "title": "Germany", "text": "Germany has sixteen states."},
        ],
    )
    return load_documents([path])


def test_load_questions_by_id_and_title(tmp_path, three_docs):
    path = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"document": "de", "question": "Capital of Germany?", "answer": "Berlin"},
            {"document": "france", "question": "Country?", "answers": ["France", "FR"]},  # title, any case
            {"document": "de2", "question": "How many states?", "answers": ["16", "sixteen"]},
        ],
    )
    docs = load_questions(path, three_docs)
    assert [d.id for d in docs] == ["fr", "de", "de2"]
    assert docs[0].questions == [Question("Capital?", ("Paris",)), Question("Country?", ("France", "FR"))]
    assert docs[1].questions == [Question("Capital of Germany?", ("Berlin",))]
    assert docs[2].questions == [Question("How many states?", ("16", "sixteen"))]
    # The inputs are left alone.
    assert [len(d.questions) for d in three_docs] == [1, 0, 0]


def test_load_questions_from_json_list_with_integer_reference(tmp_path):
    docs = load_documents([write_json(tmp_path / "d.json", [{"id": 12, "text": "twelve"}])])
    path = write_json(tmp_path / "q.json", [{"document": 12, "question": "Which?", "answer": "twelve"}])
    assert load_questions(path, docs)[0].questions == [Question("Which?", ("twelve",))]


def test_id_wins_over_title(tmp_path):
    docs = [Document("Alpha", "other", "x"), Document("b", "Alpha", "y")]
    path = write_jsonl(tmp_path / "q.jsonl", [{"document": "Alpha", "question": "q?", "answer": "a"}])
    out = load_questions(path, docs)
    assert [len(d.questions) for d in out] == [1, 0]


def test_unknown_document_reference(tmp_path, three_docs):
    path = write_jsonl(
        tmp_path / "q.jsonl",
        [{"document": "fr", "question": "q?", "answer": "a"}, {"document": "Spain", "question": "q?", "answer": "a"}],
    )
    message = user_error(load_questions, path, three_docs)
    assert "q.jsonl line 2" in message and "unknown document 'Spain'" in message


def test_ambiguous_title(tmp_path, three_docs):
    path = write_json(tmp_path / "q.json", [{"document": "Germany", "question": "q?", "answer": "a"}])
    message = user_error(load_questions, path, three_docs)
    assert "q.json [0]" in message and "shared by 2 documents" in message and "'de'" in message


@pytest.mark.parametrize(
    "record, fragment",
    [
        ({"question": "q?", "answer": "a"}, "has no 'document'"),
        ({"document": ["fr"], "question": "q?", "answer": "a"}, "'document' must be a string"),
        ({"document": "fr", "answer": "a"}, "'question' must be a string"),
        ({"document": "fr", "question": "q?"}, "question has no answer"),
        ({"document": "fr", "question": "q?", "answers": [" "]}, "question has no answer"),
        ("fr: q?", "expected a question object"),
    ],
)
def test_bad_question_records(tmp_path, three_docs, record, fragment):
    path = write_jsonl(tmp_path / "q.jsonl", [record])
    message = user_error(load_questions, path, three_docs)
    assert "q.jsonl line 1" in message and fragment in message


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("q.jsonl", "", "no questions"),
        ("q.json", "[]", "no questions"),
        ("q.json", '{"document": "fr"}', "expected a JSON list"),
        ("q.json", "[{", "malformed JSON at line 1"),
        ("q.jsonl", '{"document": "fr", "question": "q?", "answer": "a"}\n{oops}\n', "line 2: malformed JSON"),
        ("q.csv", "document,question,answer", "unsupported file type"),
        ("q.jsonl", b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_question_files(tmp_path, three_docs, name, content, fragment):
    path = write(tmp_path / name, content)
    message = user_error(load_questions, path, three_docs)
    assert name in message and fragment in message


def test_missing_question_file(tmp_path, three_docs):
    message = user_error(load_questions, tmp_path / "absent.jsonl", three_docs)
    assert "absent.jsonl" in message and "no such file" in message


def test_question_file_given_a_folder(tmp_path, three_docs):
    assert "got a folder" in user_error(load_questions, tmp_path, three_docs)
