"""Tests for models.data.catalog_io: generic CSV / TSV / JSONL / RecBole imports with per-line problem reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from models.data.catalog import Catalog
from models.data.catalog_io import (
    DISLIKE_RATING,
    LIKE_RATING,
    BadRowsError,
    RowProblem,
    read_catalog,
    read_interactions,
    write_catalog_jsonl,
)
from models.errors import ImportFormatError


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(name="films", item_ids=["a", "b", "c"], titles=["Alpha", "Beta", "Gamma"])


def lines_of(problems: Sequence[RowProblem]) -> list[int]:
    return [p.line for p in problems]


# ---------------------------------------------------------------------------------- catalogs


def test_csv_catalog_reads_every_field_with_header_aliases(tmp_path: Path) -> None:
    path = write(
        tmp_path / "items.csv",
        "ItemId,Name,Description,Genres,YEAR,Director\n"
        '1,"Heat, The",A heist.,Crime|Thriller,1995,Mann\n'
        '2,Amélie,"Paris,\nmontmartre",Comedy; Romance,,Jeunet\n'
        "3,Brazil,,,1985.0,Gilliam\n",
    )
    result = read_catalog(path, name="films")
    cat = result.value
    assert result.problems == []
    assert cat.name == "films"
    assert cat.item_ids == ["1", "2", "3"]
    assert cat.titles == ["Heat, The", "Amélie", "Brazil"]
    assert cat.texts == ["A heist.", "Paris,\nmontmartre", ""]
    assert cat.tags == [["Crime", "Thriller"], ["Comedy", "Romance"], []]
    assert cat.years == [1995, None, 1985]
    assert result.ignored_columns == ["Director"]


@pytest.mark.parametrize(
    ("header", "tags_cell", "expected"),
    [
        ("id,title,tags", '"x|y|x"', ["x", "y"]),
        ("item_id,title,genres", '"x; y"', ["x", "y"]),
        ("itemId,title,tag", '"x, y"', ["x", "y"]),
        ("id,title,tags", '"a,b|c"', ["a,b", "c"]),
    ],
)
def test_csv_tag_separators_and_id_aliases(tmp_path: Path, header: str, tags_cell: str, expected: list[str]) -> None:
    path = write(tmp_path / "items.csv", f"{header}\n7,Seven,{tags_cell}\n")
    result = read_catalog(path, name="c")
    assert result.value.item_ids == ["7"]
    assert result.value.tags == [expected]


def test_jsonl_catalog_accepts_lists_strings_and_integer_ids(tmp_path: Path) -> None:
    rows = [
        {"id": 10, "title": "Ten", "tags": ["drama", "war"], "year": 2001, "text": "d"},
        {"item_id": "11", "name": "Eleven", "genres": "a|b", "year": None},
        {"id": "12", "title": "Twelve", "text": None, "tags": None},
    ]
    path = write(tmp_path / "items.jsonl", "\n".join(json.dumps(r) for r in rows[:1]) + "\n")
    assert read_catalog(path, name="x").value.item_ids == ["10"]
    # mixing 'id' and 'item_id' across rows is ambiguous: refused with a clear message
    mixed = write(tmp_path / "mixed.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ImportFormatError, match="several columns for the item id: 'id', 'item_id'"):
        read_catalog(mixed, name="x")
    rows[1] = {"id": "11", "title": "Eleven", "tags": "a|b", "year": None}
    path = write(tmp_path / "items.ndjson", "\n".join(json.dumps(r) for r in rows) + "\n")
    cat = read_catalog(path, name="x").value
    assert cat.item_ids == ["10", "11", "12"]
    assert cat.tags == [["drama", "war"], ["a", "b"], []]
    assert cat.years == [2001, None, None]
    assert cat.texts == ["d", "", ""]


def test_catalog_round_trips_through_jsonl(tmp_path: Path) -> None:
    source = write(
        tmp_path / "items.csv",
        'id,title,text,tags,year\nm1,"Quote ""this""",Line one\u2028still one,Sci-Fi|Drama,1982\nm2,Ünïcödé,,,\n',
    )
    original = read_catalog(source, name="films").value
    out = tmp_path / "nested" / "items.jsonl"
    write_catalog_jsonl(original, out)
    assert out.read_bytes().endswith(b"\n")
    assert not list(out.parent.glob(".*.tmp")), "atomic write leaves no temp file"
    again = read_catalog(out, name="films")
    assert again.problems == []
    for attr in ("item_ids", "titles", "texts", "tags", "years"):
        assert getattr(again.value, attr) == getattr(original, attr), attr
    assert again.value.titles[0] == 'Quote "this"'
    assert [again.value.content_hash(i) for i in range(2)] == [original.content_hash(i) for i in range(2)]


def test_catalog_bad_rows_are_reported_by_physical_line_and_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "items.csv",
        "id,title,text,year\n"  # line 1
        '1,One,"spans\nthree\nlines",2000\n'  # lines 2-4
        "2,,no title,2001\n"  # line 5: missing title
        "\n"  # line 6: blank, not a row
        "3,Three,,nineteen\n"  # line 7: bad year
        "1,One again,,\n"  # line 8: duplicate id
        ",Orphan,,\n"  # line 9: missing id
        "4,Four,,2004\n",  # line 10
    )
    result = read_catalog(path, name="c")
    assert result.value.item_ids == ["1", "4"]
    assert result.value.titles == ["One", "Four"]
    assert lines_of(result.problems) == [5, 7, 8, 9]
    by_line = {p.line: p for p in result.problems}
    assert "title is missing" in by_line[5].message
    assert by_line[5].raw == "2,,no title,2001"
    assert "year 'nineteen' is not a whole number" in by_line[7].message
    assert "'1' already appeared on line 2" in by_line[8].message
    assert "item id is missing" in by_line[9].message


def test_jsonl_malformed_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path / "items.jsonl",
        '{"id": "a", "title": "A"}\n'  # 1
        "\n"  # 2
        '{"id": "b", "title": "B"\n'  # 3: malformed
        '["c", "C"]\n'  # 4: not an object
        '{"id": "d", "title": 5.5}\n'  # 5: title of the wrong type
        '{"id": "e", "title": "E", "tags": [1]}\n'  # 6: bad tags
        '{"id": "f", "title": "F"}\r\n',  # 7 (CRLF)
    )
    result = read_catalog(path, name="c")
    assert result.value.item_ids == ["a", "f"]
    assert lines_of(result.problems) == [3, 4, 5, 6]
    assert "not valid JSON" in result.problems[0].message
    assert result.problems[0].raw == '{"id": "b", "title": "B"'
    assert "not an object" in result.problems[1].message
    assert "title must be text" in result.problems[2].message
    assert "tags must be a list of strings" in result.problems[3].message


def test_catalog_refuse_mode_lists_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "items.csv", "id,title\n1,One\n2,\n3,Three\n1,Dup\n")
    with pytest.raises(BadRowsError) as info:
        read_catalog(path, name="c", on_error="refuse")
    err = info.value
    assert isinstance(err, ImportFormatError)
    assert "2 bad rows" in err.message
    assert "line 3: title is missing" in err.message
    assert "line 5: item id '1' already appeared on line 2" in err.message
    assert "on_error='skip'" in err.hint and "Fix those lines" in err.hint
    assert lines_of(err.problems) == [3, 5]
    # the same file imports fine when skipping
    assert read_catalog(path, name="c").value.item_ids == ["1", "3"]


def test_refuse_message_lists_first_ten_and_the_total(tmp_path: Path) -> None:
    body = "".join(f"{i},\n" for i in range(14))  # 14 rows without title, lines 2..15
    path = write(tmp_path / "items.csv", "id,title\nok,Fine\n" + body)
    with pytest.raises(BadRowsError) as info:
        read_catalog(path, name="c", on_error="refuse")
    message = info.value.message
    assert "14 bad rows" in message
    assert "line 3:" in message and "line 12:" in message
    assert "line 13:" not in message
    assert "and 4 more" in message


def test_missing_required_column_names_it_and_the_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path / "items.csv", "id,label,year\n1,x,2000\n")
    with pytest.raises(ImportFormatError) as info:
        read_catalog(path, name="c")
    message = info.value.message
    assert "no title column" in message
    assert "columns found: 'id', 'label', 'year'" in message
    assert "items.csv" in message


def test_empty_and_header_only_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="is empty"):
        read_catalog(write(tmp_path / "empty.csv", ""), name="c")
    with pytest.raises(ImportFormatError, match="is empty"):
        read_catalog(write(tmp_path / "blank.jsonl", "\n  \n"), name="c")
    with pytest.raises(ImportFormatError, match="header but no rows"):
        read_catalog(write(tmp_path / "header.csv", "id,title\n"), name="c")


def test_file_where_every_row_is_bad_fails_even_when_skipping(tmp_path: Path) -> None:
    path = write(tmp_path / "items.jsonl", "not json\n{also not}\n")
    with pytest.raises(BadRowsError) as info:
        read_catalog(path, name="c", on_error="skip")
    assert "no usable row" in info.value.message
    assert lines_of(info.value.problems) == [1, 2]


def test_csv_structural_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path / "items.csv",
        "id,title\n"
        "1,Heat, The\n"  # 2: unquoted comma -> too many fields
        '2,"Bad"quote\n'  # 3: broken quoting
        "3,Fine,\n"  # 4: trailing empty field is tolerated
        '4,"never closed\n'  # 5: swallows the rest
        "5,Lost\n",
    )
    result = read_catalog(path, name="c")
    assert result.value.item_ids == ["3"]
    assert lines_of(result.problems) == [2, 3, 5]
    assert "row has 3 fields but the header has 2" in result.problems[0].message
    assert "quoting is broken" in result.problems[1].message
    assert "lines 5-6 were read as one row" in result.problems[2].message


def test_raw_text_is_truncated(tmp_path: Path) -> None:
    path = write(tmp_path / "items.csv", "id,title,text\n1,One\n2,," + "x" * 500 + "\n")
    problem = read_catalog(path, name="c").problems[0]
    assert problem.line == 3
    assert len(problem.raw) == 200 and problem.raw.endswith("…")


# ---------------------------------------------------------------------------------- encodings and formats


def test_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes(b"\xef\xbb\xbfid,title\n1,Caf\xc3\xa9\n")
    result = read_catalog(path, name="c")
    assert result.value.item_ids == ["1"]
    assert result.value.titles == ["Café"]
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"id": "1", "title": "T"}\n')
    assert read_catalog(jsonl, name="c").value.titles == ["T"]


def test_undecodable_file_names_file_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"id,title\n1,ok\n2,Caf\xe9\n")  # 0xe9 is at byte offset 19, line 3
    with pytest.raises(ImportFormatError) as info:
        read_catalog(path, name="c")
    message = info.value.message
    assert "latin1.csv" in message
    assert "byte offset 19" in message and "line 3" in message
    assert "UTF-8" in info.value.hint


def test_utf16_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("id,title\n1,x\n".encode("utf-16"))
    with pytest.raises(ImportFormatError, match="UTF-16"):
        read_catalog(path, name="c")


@pytest.mark.parametrize("name", ["items.xlsx", "items.json", "items"])
def test_unknown_extension_is_an_error(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "id,title\n1,x\n")
    with pytest.raises(ImportFormatError) as info:
        read_catalog(path, name="c")
    assert "not a known import format" in info.value.message
    assert ".jsonl" in info.value.hint
    if name.endswith(".json"):
        assert "one JSON object per line" in info.value.hint


def test_missing_file_is_an_import_error(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="does not exist"):
        read_catalog(tmp_path / "nope.csv", name="c")


# ---------------------------------------------------------------------------------- interaction logs


def test_csv_log_with_ratings_and_mixed_timestamps(tmp_path: Path, catalog: Catalog) -> None:
    path = write(
        tmp_path / "log.csv",
        "User_Id,item,rating,timestamp\n"
        "u2,b,4,1700000000\n"
        "u1,a,3.5,2024-05-01T12:30:00Z\n"
        "u2,c,5,2024-05-01\n"
        "u1,b,1,1700000000.9\n"
        "u2,a,2,2024-05-01T14:30:00+02:00\n",
    )
    result = read_interactions(path, catalog=catalog)
    log = result.value
    assert result.problems == []
    assert log.user_ids == ["u2", "u1"]  # order of first appearance
    assert log.users.tolist() == [0, 1, 0, 1, 0]
    assert log.items.tolist() == [1, 0, 2, 1, 0]
    assert log.ratings.tolist() == [4.0, 3.5, 5.0, 1.0, 2.0]
    assert log.timestamps.tolist() == [1700000000, 1714566600, 1714521600, 1700000000, 1714566600]
    assert log.ratings.dtype == np.float32 and log.timestamps.dtype == np.int64
    assert [s.tolist() for s in log.sequences()] == [[1, 2, 0], [1, 0]]


def test_jsonl_log_round_trip_and_row_order_without_timestamps(tmp_path: Path, catalog: Catalog) -> None:
    rows = [
        {"user": 7, "item": "c", "rating": 5},
        {"user": 7, "item": "a", "rating": "2"},
        {"user": "8", "item": "b", "rating": 3.0},
        {"user": 7, "item": "b", "rating": 4},
    ]
    path = write(tmp_path / "log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    log = read_interactions(path, catalog=catalog).value
    assert log.user_ids == ["7", "8"]
    assert log.timestamps.tolist() == [0, 1, 2, 3]  # no timestamp column: file order
    assert [s.tolist() for s in log.sequences()] == [[2, 0, 1], [1]]
    assert log.ratings.tolist() == [5.0, 2.0, 3.0, 4.0]


def test_log_bad_rows_are_reported_and_skipped(tmp_path: Path, catalog: Catalog) -> None:
    path = write(
        tmp_path / "log.csv",
        "user,item,rating,timestamp\n"  # 1
        "u1,a,abc,100\n"  # 2: non-numeric rating
        "u1,b,7,100\n"  # 3: rating out of range
        "u1,zzz,3,100\n"  # 4: unknown item
        "u1,c,3,yesterday\n"  # 5: bad timestamp
        "u2,a,4,200\n"  # 6: good
        ",b,4,200\n"  # 7: missing user
        "u2,c,,200\n"  # 8: missing rating
        "u2,b,4,\n"  # 9: missing timestamp while the column exists
        "u2,b,4,1714566600000\n"  # 10: milliseconds
        "u3,c,nan,300\n"  # 11: not a finite number
        "u3,c,5,300\n",  # 12: good
    )
    result = read_interactions(path, catalog=catalog)
    assert lines_of(result.problems) == [2, 3, 4, 5, 7, 8, 9, 10, 11]
    messages = {p.line: p.message for p in result.problems}
    assert messages[2] == "rating 'abc' is not a number from 1 to 5"
    assert messages[3] == "rating '7' is not a number from 1 to 5"
    assert "item 'zzz' is not in catalog 'films'" in messages[4]
    assert "timestamp 'yesterday' is neither unix seconds nor an ISO-8601 date" in messages[5]
    assert "user is missing" in messages[7]
    assert "rating is missing" in messages[8]
    assert "timestamp is missing" in messages[9]
    assert "milliseconds" in messages[10]
    assert "not a number from 1 to 5" in messages[11]
    assert result.problems[3].raw == "u1,c,3,yesterday"
    log = result.value
    assert log.user_ids == ["u2", "u3"]
    assert log.items.tolist() == [0, 2]
    assert log.timestamps.tolist() == [200, 300]


def test_log_refuse_mode_raises_with_line_numbers(tmp_path: Path, catalog: Catalog) -> None:
    path = write(tmp_path / "log.csv", "user,item,rating\nu1,a,5\nu1,nope,4\nu1,b,9\n")
    with pytest.raises(BadRowsError) as info:
        read_interactions(path, catalog=catalog, on_error="refuse")
    message = info.value.message
    assert "2 bad rows" in message and "nothing was imported" in message
    assert "line 3: item 'nope' is not in catalog" in message
    assert "line 4: rating '9' is not a number from 1 to 5" in message


def test_like_dislike_mapping(tmp_path: Path, catalog: Catalog) -> None:
    values = ["like", "DISLIKE", "1", "0", "true", "False", "+1", "-1", "liked", "meh"]
    csv_text = "user,item,feedback\n" + "".join(f"u,a,{v}\n" for v in values)
    result = read_interactions(write(tmp_path / "log.csv", csv_text), catalog=catalog)
    assert LIKE_RATING == 5.0 and DISLIKE_RATING == 1.0
    assert result.value.ratings.tolist() == [5.0, 1.0, 5.0, 1.0, 5.0, 1.0, 5.0, 1.0, 5.0]
    assert lines_of(result.problems) == [11]
    assert "feedback 'meh' is not like or dislike" in result.problems[0].message

    rows = [{"user": "u", "item": "b", "like": v} for v in (True, False, 1, -1, 0, "like", 2)]
    jsonl = write(tmp_path / "log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    result = read_interactions(jsonl, catalog=catalog)
    assert result.value.ratings.tolist() == [5.0, 1.0, 5.0, 1.0, 1.0, 5.0]
    assert lines_of(result.problems) == [7]


def test_log_needs_exactly_one_of_rating_and_feedback(tmp_path: Path, catalog: Catalog) -> None:
    both = write(tmp_path / "both.csv", "user,item,rating,like\nu,a,5,like\n")
    with pytest.raises(ImportFormatError, match="both a rating column"):
        read_interactions(both, catalog=catalog)
    neither = write(tmp_path / "neither.csv", "user,item,score\nu,a,5\n")
    with pytest.raises(ImportFormatError) as info:
        read_interactions(neither, catalog=catalog)
    assert "no rating column" in info.value.message
    assert "'user', 'item', 'score'" in info.value.message
    no_item = write(tmp_path / "no_item.csv", "user,movie,rating\nu,a,5\n")
    with pytest.raises(ImportFormatError, match="no item column"):
        read_interactions(no_item, catalog=catalog)


# ---------------------------------------------------------------------------------- RecBole


def test_recbole_inter_file(tmp_path: Path) -> None:
    items = Catalog(name="ml", item_ids=[str(i) for i in range(1, 6)], titles=[f"m{i}" for i in range(1, 6)])
    path = write(
        tmp_path / "tiny.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "196\t3\t3\t881250949\n"
        "186\t5\t3\t891717742\n"
        "196\t1\t1\t878887116\n"
        "22\t377\t1\t878887116\n"  # item not in the catalog
        "244\t2\t2\t880606923\n",
    )
    result = read_interactions(path, catalog=items)
    log = result.value
    assert log.user_ids == ["196", "186", "244"]
    assert log.items.tolist() == [2, 4, 0, 1]
    assert log.ratings.tolist() == [3.0, 3.0, 1.0, 2.0]
    assert log.timestamps.tolist() == [881250949, 891717742, 878887116, 880606923]
    assert lines_of(result.problems) == [5]
    assert "item '377' is not in catalog 'ml'" in result.problems[0].message


def test_recbole_typed_header_in_tsv_keeps_quotes_as_text(tmp_path: Path) -> None:
    path = write(
        tmp_path / "items.tsv",
        'item_id:token\ttitle:token_seq\tyear:float\n1\t"Quoted" start\t1990\n2\tPlain\t\n',
    )
    cat = read_catalog(path, name="c").value
    assert cat.titles == ['"Quoted" start', "Plain"]
    assert cat.years == [1990, None]


def test_real_ml100k_inter_imports_like_the_loader() -> None:
    from models.assets import ml100k_dir, ml100k_ready
    from models.data.movielens import load_ml100k

    if not ml100k_ready():
        pytest.skip("MovieLens-100K assets are not prepared")
    dataset = load_ml100k()
    result = read_interactions(ml100k_dir() / "ml-100k.inter", catalog=dataset.catalog, on_error="refuse")
    assert result.problems == []
    assert len(result.value) == len(dataset.interactions) == 100_000
    assert result.value.n_users == 943
    assert float(result.value.ratings.sum()) == float(dataset.interactions.ratings.sum())


def test_a_title_ending_in_its_year_gives_the_year_when_no_column_does(tmp_path: Path) -> None:
    path = write(
        tmp_path / "items.csv",
        "id,title,year\n"
        "1,[REC] (2007),\n"  # no year column value: the bracket gives it
        "2,Alien (1979),1979\n"  # the same year twice: shown once
        "3,Solaris (1972),2002\n"  # they disagree: nothing is guessed
        "4,(1999),\n"  # the year is the whole title: kept as the title
        "5,Blade Runner 2049,\n",
    )
    cat = read_catalog(path, name="films").value
    assert cat.titles == ["[REC]", "Alien", "Solaris (1972)", "(1999)", "Blade Runner 2049"]
    assert cat.years == [2007, 1979, 2002, None, None]
    assert cat.label(0) == "[REC] (2007)"
