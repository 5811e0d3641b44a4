"""Every task: a known record renders to the expected prompt and candidates (docs/algorithms.md, "Prompts and
verbalizers"), both layouts
read the same, the shared/ files parse, and the answer metrics match hand-computed cases ("Evaluation")."""

import json
import zipfile

import pytest

from tests.conftest import SHARED_DATA
from zoft.tasks import TASKS, GenExample, TaskDataError, load_splits, read_table
from zoft.tasks.metrics import best_f1, exact_match, f1, normalize


def render(task, record):
    task = TASKS[task]
    rows = task.flatten([record]) if task.flatten else [record]
    return [task.to_example(r) for r in rows]


def test_cb():
    ex, = render("cb", {"premise": "It rained.", "hypothesis": "the ground is wet", "label": "neutral"})
    assert ex.prompt == 'Suppose It rained. Can we infer that "the ground is wet"? Yes, No, or Maybe?\n'
    assert ex.candidates == ("Yes", "No", "Maybe") and ex.label == 2
    hub, = render("cb", {"premise": "It rained.", "hypothesis": "the ground is wet", "label": 1})
    assert hub.label == 1  # Hub: 1 = contradiction → "No"


def test_wsc_nested_and_flat_layouts_agree():
    text = "Mark told Pete many lies about himself. He should have been more skeptical."
    nested, = render("wsc", {"text": text, "target": {"span1_text": "Pete", "span2_text": "He"}, "label": True})
    flat, = render("wsc", {"text": text, "span1_text": "Pete", "span2_text": "He", "label": 1})
    assert nested == flat
    assert nested.prompt == (f'{text}\nIn the previous sentence, does the pronoun "he" refer to Pete? Yes or No?\n')
    assert nested.candidates == ("No", "Yes") and nested.label == 1


def test_wic():
    ex, = render("wic", {"word": "place", "sentence1": "Come to my place.", "sentence2": "No place for him.",
                         "label": False})
    assert ex.prompt == ('Does the word "place" have the same meaning in these two sentences? Yes, No?\n'
                         "Come to my place.\nNo place for him.\n")
    assert ex.label == 0


def test_multirc_flattens_paragraphs_to_answer_pairs():
    record = {"passage": {"text": "Force moves things.", "questions": [
        {"question": "What moves things?", "answers": [{"text": "Force", "label": 1}, {"text": "Mass", "label": 0}]}]}}
    first, second = render("multirc", record)
    assert first.prompt == ('Force moves things.\nQuestion: What moves things?\nI found this answer "Force". '
                            "Is that correct? Yes or No?\n")
    assert (first.label, second.label) == (1, 0) and first.candidates == ("No", "Yes")
    hub, = render("multirc", {"paragraph": "Force moves things.", "question": "What moves things?",
                              "answer": "Force", "label": 1})
    assert hub == first


def test_copa_connectors_and_lower_casing():
    effect, = render("copa", {"premise": "My body cast a shadow.", "choice1": "The sun was rising.",
                              "choice2": "I was tired.", "question": "effect", "label": 1})
    assert effect.prompt == "My body cast a shadow so"
    assert effect.candidates == (" the sun was rising.", " I was tired.") and effect.label == 1
    cause, = render("copa", {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "It rained.",
                             "question": "cause", "label": 0})
    assert cause.prompt == "The man fell because" and cause.candidates[0] == " he slipped."
    assert TASKS["copa"].objective == "lm" and TASKS["copa"].num_dev == 100


def test_record_from_original_layout_any_gold_counts():
    text = "Obama met Merkel.\n@highlight\nTalks in Berlin"
    record = {"passage": {"text": text, "entities": [{"start": 0, "end": 4}, {"start": 10, "end": 15},
                                                     {"start": 0, "end": 4}]},
              "qas": [{"query": "@placeholder hosted the talks", "answers": [{"text": "Merkel"}]}]}
    ex, = render("record", record)
    assert ex.prompt == "Obama met Merkel.\n- Talks in Berlin"
    assert ex.candidates == ("\n- Obama hosted the talks", "\n- Merkel hosted the talks")  # duplicates dropped
    assert ex.label == 1 and ex.correct == (1,)
    hub, = render("record", {"passage": text, "query": "@placeholder hosted the talks",
                             "entities": ["Obama", "Merkel"], "answers": ["Merkel", "Obama"]})
    assert hub.correct == (0, 1)


def test_squad_all_three_layouts():
    context, question = "Denver won the game.", "Who won?"
    original = {"version": "1.1", "data": [{"title": "Super_Bowl", "paragraphs": [
        {"context": context, "qas": [{"question": question, "answers": [{"text": "Denver"}, {"text": "Denver"}]}]}]}]}
    ex, = render("squad", original)
    assert isinstance(ex, GenExample)
    assert ex.prompt == "Title: Super Bowl\nContext: Denver won the game.\nQuestion: Who won?\nAnswer:"
    assert ex.target == " Denver\n" and ex.answers == ("Denver", "Denver")
    hub, = render("squad", {"title": "Super_Bowl", "context": context, "question": question,
                            "answers": {"text": ["Denver"], "answer_start": [0]}})
    assert hub.prompt == ex.prompt
    simplified, = render("squad", {"context": context, "question": question, "answer": "Denver"})
    assert simplified.prompt == "Context: Denver won the game.\nQuestion: Who won?\nAnswer:"


def test_drop_original_and_hub():
    original = {"nfl_1": {"passage": "The Bears scored 3 touchdowns.", "qa_pairs": [
        {"question": "How many touchdowns?", "answer": {"number": "3", "date": {}, "spans": []},
         "validated_answers": [{"number": "", "date": {}, "spans": ["three"]}]}]}}
    ex, = render("drop", original)
    assert ex.prompt == "Passage: The Bears scored 3 touchdowns.\nQuestion: How many touchdowns?\nAnswer:"
    assert ex.target == " 3\n" and ex.answers == ("3", "three")
    hub, = render("drop", {"passage": "P", "question": "Q", "answers_spans": {"spans": ["x y"], "types": ["span"]}})
    assert hub.target == " x y\n"


def test_roberta_set_templates():
    sst5, = render("sst5", {"sentence": '"a stirring , funny film"', "label": "4"})
    assert sst5.prompt == "a stirring , funny film It was"  # the csv's stray quotes are gone
    assert sst5.candidates == (" terrible", " bad", " okay", " good", " great") and sst5.label == 4
    nli, = render("snli", {"premise": "A man sleeps.", "hypothesis": "Someone rests", "label": "entailment"})
    assert nli.prompt == "A man sleeps?"
    assert nli.candidates == (" No, someone rests", " Yes, someone rests", " Maybe, someone rests")
    assert nli.label == 1
    hub, = render("mnli", {"premise": "A man sleeps.", "hypothesis": "Someone rests", "label": 2})
    assert hub.label == 0  # Hub 2 = contradiction → " No"
    assert render("snli", {"premise": "a", "hypothesis": "b", "label": -1}) == []  # no gold label
    trec, = render("trec", {"line": "NUM:count How many trees are there ?"})
    assert trec.prompt == "How many trees are there ? Answer type:"
    assert trec.candidates[trec.label] == " Number"
    hub_trec, = render("trec", {"text": "What is CNN ?", "coarse_label": 0})  # CogComp: 0 = ABBR
    assert hub_trec.candidates[hub_trec.label] == " Expression"


def test_ragged_glue_nli_tsv_takes_the_last_cell_as_gold(tmp_path):
    header = "index\tsentence1\tsentence2\tlabel1\tgold_label\n"
    (tmp_path / "train.tsv").write_text(header + "0\tA dog runs.\tAn animal moves.\tentailment\tentailment\n"
                                        "1\tA cat.\tA dog.\tneutral\tcontradiction\tcontradiction\tcontradiction\n")
    rows = read_table(tmp_path / "train.tsv")
    assert [r["gold_label"] for r in rows] == ["entailment", "contradiction"]
    (tmp_path / "bad.tsv").write_text("a\tb\n1\t2\t3\n")
    with pytest.raises(TaskDataError, match=r"data row 1 \(line 2\) has more cells"):
        read_table(tmp_path / "bad.tsv")


def test_zip_and_bad_zip(tmp_path):
    data = {"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"question": "q", "answers": [
        {"text": "c"}]}]}]}]}
    with zipfile.ZipFile(tmp_path / "dev-v1.1.json.zip", "w") as z:
        z.writestr("dev-v1.1.json", json.dumps(data))
    assert read_table(tmp_path / "dev-v1.1.json.zip") == [data]
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(TaskDataError, match="not a valid zip"):
        read_table(tmp_path / "broken.zip")


def test_missing_split_names_the_file_and_where_to_put_it(tmp_path):
    with pytest.raises(TaskDataError, match="expected one of train.jsonl.*--data-dir has no ReCoRD files"):
        load_splits(TASKS["record"], tmp_path)
    with pytest.raises(TaskDataError, match="drop_dataset_train.json.*--data-dir has no DROP files"):
        load_splits(TASKS["drop"], tmp_path)


def test_per_label_sampling_takes_k_of_each_label():
    records = [{"sentence": f"s{i}", "label": str(i % 2 if i < 60 else 1)} for i in range(100)]
    task = TASKS["sst2"]
    from zoft.tasks import sample_splits

    splits = sample_splits(records, records[:10], task, num_train=16, seed=13, per_label=True)
    assert sorted(e.label for e in splits.train) == [0] * 16 + [1] * 16
    assert sorted(e.label for e in splits.dev) == [0] * 14 + [1] * 16  # only 30 label-0 rows exist
    assert not {e.prompt for e in splits.train} & {e.prompt for e in splits.dev}
    again = sample_splits(records, records[:10], task, num_train=16, seed=13, per_label=True)
    assert again.train == splits.train
    with pytest.raises(TaskDataError, match="generation task"):
        sample_splits([], [], TASKS["squad"], per_label=True)


def test_per_label_custom_task_evaluates_on_rows_it_did_not_sample(tmp_path):
    from zoft.tasks import custom_task

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}", "label": i % 3}) + "\n" for i in range(40)))
    task = custom_task(path, verbalizer="0=a,1=b,2=c")
    splits = load_splits(task, num_train=4, num_dev=2, num_eval=100, per_label=True)
    assert len(splits.train) == 12 and len(splits.dev) == 6 and len(splits.eval) == 40 - 18
    assert not {e.prompt for e in splits.eval} & {e.prompt for e in splits.train + splits.dev}


# -- the metrics (docs/algorithms.md, "Evaluation" oracles) ----------------------------------------------


def test_normalisation_and_f1_oracles():
    assert normalize("The  Cat!") == "cat"
    assert normalize("An apple, a PEAR and the plum.") == "apple pear and plum"
    assert f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert f1("", "") == 1.0 and f1("the", "a") == 1.0  # both normalise to nothing
    assert f1("cat", "") == 0.0 and f1("dog", "cat") == 0.0
    assert f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset overlap
    assert exact_match("The Denver Broncos.", "denver broncos") == 1.0
    assert best_f1("Denver", ["Broncos", "Denver Broncos"]) == pytest.approx(2 / 3)


# -- the shared original files (CI lays shared/ beside the repo) ---------------------------------------------

_SHARED = [("sst2", "sst2", {}, 872), ("rte", "rte", {}, 277), ("cb", "cb", {}, 56), ("boolq", "boolq", {}, 1000),
           ("wsc", "wsc", {}, 104), ("wic", "wic", {}, 638), ("multirc", "multirc", {}, 1000),
           ("copa", "copa", {}, 100), ("squad", "squad", {}, 1000), ("sst5", "sst5", {}, 1000),
           ("trec", "trec", {}, 500),
           ("snli", "snli/k-shot/16-13", {"eval_file": "snli/dev.jsonl", "num_dev": 0}, 1000),
           ("mnli", "mnli/k-shot/16-13", {"eval_file": "mnli/dev.jsonl", "num_dev": 0}, 1000)]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("name,folder,kwargs,num_eval", _SHARED, ids=[s[0] for s in _SHARED])
def test_shared_files_load(name, folder, kwargs, num_eval):
    kwargs = {k: (str(SHARED_DATA / v) if k == "eval_file" else v) for k, v in kwargs.items()}
    splits = load_splits(TASKS[name], SHARED_DATA / folder, **kwargs)
    assert len(splits.eval) == num_eval and splits.train
    if name in ("cb", "copa"):
        assert len(splits.dev) == 100
    if name == "snli":
        assert len(splits.train) == 48 and sorted({e.label for e in splits.train}) == [0, 1, 2]


@pytest.mark.parametrize("name,hub,splits", [
    ("copa", ("aps/super_glue", "copa"), ("train", "validation")),
    ("squad", ("rajpurkar/squad", None), ("train", "validation")),
    ("mnli", ("nyu-mll/glue", "mnli"), ("train", "validation_matched")),
    ("trec", ("CogComp/trec", None), ("train", "test")),
])
def test_hub_names_and_splits(monkeypatch, name, hub, splits):
    import datasets

    rows = {"copa": {"premise": "It fell.", "choice1": "A.", "choice2": "B.", "question": "cause", "label": 1},
            "squad": {"title": "T", "context": "c", "question": "q", "answers": {"text": ["c"], "answer_start": [0]}},
            "mnli": {"premise": "p.", "hypothesis": "h", "label": 0},
            "trec": {"text": "Who ?", "coarse_label": 3, "fine_label": 0}}[name]
    calls = []

    class Fake:
        def to_list(self):
            return [rows] * 3

    def load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        return Fake()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = load_splits(TASKS[name], None, num_train=2, num_dev=1, num_eval=2)
    assert calls == [(*hub, splits[0]), (*hub, splits[1])]
    assert len(out.train) == 2 and len(out.eval) == 2 and out.source.startswith("hub ")
