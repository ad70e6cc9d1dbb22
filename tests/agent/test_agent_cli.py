"""The agent's profile commands end to end: real store, real catalog and vectors, the real training worker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.store.profile_store import ProfileStore

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("warm_embedding_cache")


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def like(*items: str) -> None:
    for item in items:
        code, _, stderr = invoke("rate", item, "like", "--no-train")
        assert code == 0, stderr


def test_rate_train_inspect_json_schema() -> None:
    like("Toy Story", "Aladdin", "The Lion King (1994)")
    code, _, stderr = invoke("rate", "Scream", "dislike")
    assert code == 0, stderr
    assert "retrained on 4 examples" in stderr
    code, stdout, _ = invoke("inspect", "--json")
    assert code == 0
    body = json.loads(stdout)
    assert set(body) >= {
        "catalog",
        "encrypted",
        "interactions",
        "derived_from",
        "affinities",
        "aversions",
        "private_adapter",
        "shared_adapter",
        "last_training",
        "egress",
        "paths",
    }
    assert body["interactions"]["liked_items"] == 3 and body["interactions"]["disliked_items"] == 1
    assert body["derived_from"] == "private adapter"
    adapter = body["private_adapter"]
    assert adapter["trained"] and adapter["norm"] > 0 and adapter["version"] == 1 and len(adapter["sha256"]) == 64
    assert body["last_training"]["n_examples"] == 4
    top = [a["tag"] for a in body["affinities"]]
    assert {"Animation", "Children's"} & set(top[:2]), top  # what the private vector learned from the likes
    for row in body["affinities"] + body["aversions"]:
        assert set(row) == {"tag", "lift", "items_in_catalog", "liked", "disliked", "examples"}
    assert all(a["lift"] > 0 for a in body["affinities"]) and all(a["lift"] < 0 for a in body["aversions"])
    assert body["egress"] == {"rounds": 0, "bytes_sent": 0, "bytes_received": 0, "epsilon": 0.0, "last_round_at": None}
    assert Path(body["paths"]["data"]).is_dir()


def test_suggest_json_excludes_rated_items_and_follows_the_query() -> None:
    like("Toy Story", "Aladdin", "The Lion King")
    code, stdout, _ = invoke("suggest", "-n", "10", "--json")
    assert code == 0
    plain = json.loads(stdout)["suggestions"]
    assert len(plain) == 10 and not {s["item"] for s in plain} & {"1", "95", "71"}
    assert all(s["reason"].startswith("because you liked") for s in plain)
    code, stdout, _ = invoke("suggest", "-n", "10", "--json", "--query", "science fiction in outer space")
    assert code == 0
    spaced = json.loads(stdout)["suggestions"]
    assert [s["item"] for s in spaced] != [s["item"] for s in plain]
    assert sum("Sci Fi" in s["tags"] for s in spaced) > sum("Sci Fi" in s["tags"] for s in plain)
    # "science fiction" names the catalog's Sci Fi tag: every suggestion satisfies it and says so.
    assert all("Sci Fi" in s["tags"] for s in spaced)
    assert all(s["reason"].startswith('matches "science fiction in outer space" (Sci Fi)') for s in spaced)
    code, stdout, _ = invoke("suggest", "-n", "5", "--json", "--query", "a 1990s comedy")
    assert code == 0
    comedies = json.loads(stdout)["suggestions"]
    assert all("Comedy" in s["tags"] and 1990 <= s["year"] < 2000 for s in comedies)


def test_forget_drops_the_item_and_retrains() -> None:
    like("Toy Story", "Aladdin")
    assert invoke("train")[0] == 0
    with ProfileStore.open() as store:
        before = store.load_private()
    code, _, stderr = invoke("forget", "Aladdin")
    assert code == 0, stderr
    assert "forgot 1 interaction" in stderr and "retrained on 1 examples" in stderr
    with ProfileStore.open() as store:
        assert [i.item_id for i in store.interactions()] == ["1"]
        after = store.load_private()
    assert before is not None and after is not None and not np.allclose(before.user_vector, after.user_vector)
    code, _, stderr = invoke("forget", "Aladdin")
    assert code == 1 and "no interaction" in stderr


def test_reset_leaves_nothing_recoverable(isolated_persona_home: Path, tmp_path: Path) -> None:
    marker = "Zqxv Marker Picture"
    catalog = tmp_path / "films.csv"
    catalog.write_text(f"id,title,year,genres\nzq-1,{marker},2001,Drama\nzq-2,Other Film,2002,Comedy\n")
    assert invoke("import", str(catalog), "--catalog", "films")[0] == 0
    code, stdout, _ = invoke("catalogs", "--json")
    assert code == 0 and json.loads(stdout)["active"] == "films"
    assert [c["name"] for c in json.loads(stdout)["catalogs"]] == ["ml-100k", "films"]
    assert invoke("use", "ml-100k")[0] == 0 and invoke("use", "nope")[0] == 1
    found = json.loads(invoke("search", marker, "--json")[1])
    assert found["catalog"] == "ml-100k" and found["results"] == []
    assert invoke("use", "films")[0] == 0
    code, _, stderr = invoke("rate", marker, "like")
    assert code == 0, stderr
    with ProfileStore.open() as store:
        private = store.load_private()
        assert private is not None and np.any(private.user_vector)
        secret = private.user_vector.tobytes()
        data = store.folder
        assert (data / "profile.sqlite3-wal").exists()  # WAL mode while a connection is open
    code, _, stderr = invoke("reset")  # no terminal, no --yes: refuse, delete nothing
    assert code == 1 and "--yes" in stderr and (data / "profile.sqlite3").exists()
    code, _, stderr = invoke("reset", "--yes")
    assert code == 0, stderr
    assert "profile.sqlite3" in stderr and "adapters/" in stderr
    assert not data.exists()
    leftovers = [p for p in isolated_persona_home.rglob("*") if p.is_file()]
    for path in leftovers:  # only rebuildable caches remain (catalog text embeddings)
        blob = path.read_bytes()
        assert marker.encode() not in blob and b"zq-1" not in blob and secret not in blob, path
    assert all("cache" in p.relative_to(isolated_persona_home).parts for p in leftovers)


def test_import_history_with_bad_rows_names_the_lines(tmp_path: Path) -> None:
    log = tmp_path / "mine.csv"
    log.write_text("user,item,rating,timestamp\nme,1,5,100\nme,95,4.5,200\nme,99999,4,300\nme,71,eleven,400\n")
    code, stdout, stderr = invoke("import", str(log), "--no-train", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["kind"] == "history" and report["imported"] == 2
    assert [p["line"] for p in report["problems"]] == [4, 5]
    assert "line 4" in stderr and "99999" in stderr and "line 5" in stderr
    with ProfileStore.open() as store:
        assert [i.item_id for i in store.interactions()] == ["1", "95"]


def test_import_ml100k_inter_needs_a_user(tmp_path: Path) -> None:
    inter = tmp_path / "two.inter"
    inter.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t10\n1\t95\t4\t20\n2\t50\t5\t30\n"
    )
    code, _, stderr = invoke("import", str(inter), "--no-train")
    assert code == 1 and "--user" in stderr
    code, stdout, _ = invoke("import", str(inter), "--user", "1", "--no-train", "--json")
    assert code == 0 and json.loads(stdout)["imported"] == 2
    code, _, stderr = invoke("import", str(inter), "--user", "1", "--catalog", "books", "--no-train")
    assert code == 1 and "no catalog named 'books'" in stderr and "ml-100k" in stderr


def test_import_letterboxd_matches_titles_and_lists_the_unmatched(tmp_path: Path) -> None:
    export = tmp_path / "ratings.csv"
    export.write_text(
        "Date,Name,Year,Letterboxd URI,Rating\n"
        "2024-01-02,The Usual Suspects,1995,https://boxd.it/a,4.5\n"
        "2024-01-03,Toy Story,1995,https://boxd.it/b,5\n"
        "2024-01-04,A Film That Does Not Exist,2019,https://boxd.it/c,3\n"
        "2024-01-05,Heat,1995,https://boxd.it/d,ten\n"
    )
    code, stdout, stderr = invoke("import", str(export), "--no-train", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["kind"] == "letterboxd" and report["imported"] == 2
    assert report["unmatched"] == ["A Film That Does Not Exist (2019)"]
    assert [p["line"] for p in report["problems"]] == [5]
    with ProfileStore.open() as store:
        rows = {i.item_id: i for i in store.interactions()}
    assert rows["12"].rating == 4.5 and rows["1"].rating == 5.0


def test_exit_codes_and_clear_errors() -> None:
    assert invoke("rate", "Toy Story", "maybe")[0] == 2
    assert invoke("suggest", "--bogus")[0] == 2
    code, _, stderr = invoke("rate", "Chasing Amy", "like", "--no-train")
    assert code == 1 and "id 246" in stderr and "id 268" in stderr
    code, _, stderr = invoke("rate", "Toy Stroy", "like", "--no-train")
    assert code == 1 and "Did you mean: Toy Story (1995)" in stderr
    assert invoke("completion", "bash")[0] == 0 and "_AGENT_COMPLETE" in invoke("completion", "zsh")[1]
    assert invoke("completion", "tcsh")[0] == 2


def test_encrypted_profile_refuses_a_wrong_passphrase_and_changes_nothing() -> None:
    code, _, stderr = invoke("init", "--encrypt", env={"PERSONA_PASSPHRASE": "right one"})
    assert code == 0 and "encrypted" in stderr
    code, _, stderr = invoke("rate", "Toy Story", "like", "--no-train", env={"PERSONA_PASSPHRASE": "right one"})
    assert code == 0, stderr
    with ProfileStore.open(passphrase="right one") as store:
        folder = store.folder
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    code, _, stderr = invoke("history", "--json", env={"PERSONA_PASSPHRASE": "wrong one"})
    assert code == 1 and "does not unlock" in stderr
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"} == before
    code, stdout, _ = invoke("history", "--json", env={"PERSONA_PASSPHRASE": "right one"})
    assert code == 0 and [i["item"] for i in json.loads(stdout)["interactions"]] == ["1"]
    assert invoke("init", env={"PERSONA_PASSPHRASE": "right one"})[0] == 1  # a profile exists already


def test_history_and_search_json() -> None:
    like("Toy Story")
    code, stdout, _ = invoke("history", "--json")
    assert code == 0 and json.loads(stdout)["interactions"][0]["label"] == "Toy Story (1995)"
    code, stdout, _ = invoke("search", "star trek", "--json", "-n", "3")
    results = json.loads(stdout)["results"]
    assert code == 0 and len(results) == 3 and all(r["title"].startswith("Star Trek") for r in results)


def test_encrypted_profile_keeps_imported_catalogs_and_ratings_unreadable(tmp_path: Path) -> None:
    env = {"PERSONA_PASSPHRASE": "s3cret"}
    marker = "Qwzx Private Title"
    catalog = tmp_path / "books.csv"
    catalog.write_text(f"id,title,tags\nqw-1,{marker},memoir\nqw-2,Another Book,novel\n")
    assert invoke("init", "--encrypt", env=env)[0] == 0
    assert invoke("import", str(catalog), "--catalog", "books", env=env)[0] == 0
    code, _, stderr = invoke("rate", marker, "like", "--no-train", env=env)
    assert code == 0, stderr
    code, stdout, _ = invoke("search", "qwzx", "--json", env=env)
    assert code == 0 and [r["item"] for r in json.loads(stdout)["results"]] == ["qw-1"]
    with ProfileStore.open(passphrase="s3cret") as store:
        folder = store.folder
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".jsonl.enc") for p in files)
    for path in files:
        blob = path.read_bytes()
        assert marker.encode() not in blob and b"qw-1" not in blob, path
