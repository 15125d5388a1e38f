"""The one Markdown table writer every report, summary and sweep table goes through."""

from __future__ import annotations

import pytest

from finediff.io import markdown_table, read_jsonl, write_jsonl


def test_a_table_is_a_header_a_rule_and_one_line_per_row():
    assert markdown_table(["a", "b"], [[1, "x"], ["", None]]) == ["| a | b |", "|---|---|", "| 1 | x |", "|  | None |"]
    assert markdown_table(["only"], []) == ["| only |", "|---|"]


def test_bars_are_escaped_once_and_line_breaks_joined():
    lines = markdown_table(["key|name", "value"], [["a|b", "already \\| escaped"], ["two\nlines", "c\r\nd"]])
    assert lines == ["| key\\|name | value |", "|---|---|", "| a\\|b | already \\| escaped |",
                     "| two lines | c d |"]
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").enable("table").render("\n".join(lines))
    assert html.count("<td>") == 4 and "<td>a|b</td>" in html and "<th>key|name</th>" in html


@pytest.mark.parametrize("row", [["one"], ["one", "two", "three"], []])
def test_a_row_of_the_wrong_width_is_an_error(row):
    with pytest.raises(ValueError, match=f"row 1 has {len(row)} cells, the header 2"):
        markdown_table(["a", "b"], [["fine", "row"], row])


def test_json_lines_keep_line_separators_inside_their_strings(tmp_path):
    """A generation may hold U+0085 or U+2028, which ``json.dumps(ensure_ascii=False)``
    writes as they are: the file still reads back one row per line."""
    rows = [{"text": "a\u0085b"}, {"text": "c\u2028d\u2029e"}, {"text": "plain"}]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    assert [row for _, row in read_jsonl(tmp_path / "rows.jsonl")] == rows
