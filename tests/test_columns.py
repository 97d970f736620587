"""Finding the name, ID and mobile columns by header, and recognising our own result columns."""

from __future__ import annotations

import pytest

from batch_enricher.columns import (
    ALIASES,
    FIELDS,
    RESULT_COLUMNS,
    ColumnMap,
    ColumnNames,
    existing_result_columns,
    find_columns,
    find_header,
)
from batch_enricher.errors import ColumnError, InputError


def test_chinese_headers() -> None:
    headers = ["客户编号", "姓名", "身份证号", "手机号", "备注"]
    assert find_columns(headers) == ColumnMap(realname=1, idcard=2, mobile=3)


def test_english_headers_with_stray_case_spaces_and_separators() -> None:
    assert find_columns([" Name ", "ID_Card", "MOBILE "]) == ColumnMap(0, 1, 2)
    assert find_columns(["mobile", "Real-Name", "id card"]) == ColumnMap(1, 2, 0)


def test_full_width_and_invisible_characters_in_headers() -> None:
    headers = ["\ufeff姓名", "ＩＤＣＡＲＤ", "手机号码\u3000"]
    assert find_columns(headers) == ColumnMap(0, 1, 2)


@pytest.mark.parametrize("field", FIELDS)
def test_every_alias_is_found(field: str) -> None:
    fillers = {"realname": "姓名", "idcard": "身份证号", "mobile": "手机号"}
    for alias in ALIASES[field]:
        headers = [alias if f == field else fillers[f] for f in FIELDS]
        assert getattr(find_columns(headers), field) == FIELDS.index(field), alias


def test_missing_column_names_the_field_and_lists_the_headers() -> None:
    with pytest.raises(ColumnError) as caught:
        find_columns(["客户", "姓名", "电话号码", "备注", "手机"])
    message = str(caught.value)
    assert message.startswith("no ID number column found (looked for 身份证, 身份证号,")
    assert "use --idcard-col" in message
    assert message.endswith("Headers found: 客户, 姓名, 电话号码, 备注, 手机")
    assert isinstance(caught.value, InputError)  # the CLI's exit 1 path


def test_missing_name_and_mobile_messages() -> None:
    with pytest.raises(ColumnError, match=r"^no name column found .*use --name-col"):
        find_columns(["身份证号", "手机号"])
    with pytest.raises(ColumnError, match=r"^no mobile column found .*use --mobile-col"):
        find_columns(["姓名", "身份证号", "电话"])  # a bare 电话 may be a landline


def test_ambiguous_column_names_both_and_suggests_the_flag() -> None:
    with pytest.raises(ColumnError) as caught:
        find_columns(["姓名", "身份证号", "手机", "联系电话"])
    message = str(caught.value)
    assert '"手机" (column 3)' in message
    assert '"联系电话" (column 4)' in message
    assert "--mobile-col" in message


def test_override_picks_one_of_two_candidates() -> None:
    headers = ["姓名", "身份证号", "手机", "联系电话"]
    assert find_columns(headers, mobile="联系电话").mobile == 3
    assert find_columns(headers, mobile=" 手机 ").mobile == 2


def test_override_uses_any_header_text() -> None:
    headers = ["客户", "证件", "电话号码"]
    columns = find_columns(headers, realname="客户", idcard="证件", mobile="电话号码")
    assert columns == ColumnMap(0, 1, 2)


def test_override_that_matches_nothing() -> None:
    with pytest.raises(ColumnError) as caught:
        find_columns(["姓名", "身份证号", "手机号"], mobile="Handy")
    message = str(caught.value)
    assert message.startswith('no column named "Handy" for the mobile (--mobile-col)')
    assert message.endswith("Headers found: 姓名, 身份证号, 手机号")


def test_one_column_for_two_fields_is_refused() -> None:
    with pytest.raises(ColumnError, match="both the name and the mobile"):
        find_columns(["姓名", "身份证号", "手机号"], mobile="姓名")


def test_result_columns_are_never_input_columns() -> None:
    # "mobile" must not be found in our own appended columns, e.g. a user override of "status".
    headers = ["姓名", "身份证号", "手机号", *RESULT_COLUMNS["en"]]
    assert find_columns(headers) == ColumnMap(0, 1, 2)
    with pytest.raises(ColumnError, match='no column named "status"'):
        find_columns(headers, realname="status")


def test_existing_result_columns_in_either_language() -> None:
    headers = ["姓名", "身份证号", "手机号", *RESULT_COLUMNS["en"], "备注", *RESULT_COLUMNS["zh"]]
    en = list(range(3, 3 + 11))
    zh = list(range(15, 15 + 11))
    assert existing_result_columns(headers) == en + zh
    assert existing_result_columns(["Status", " Error Code", "QUERIED_AT"]) == [0, 1, 2]
    assert existing_result_columns(["姓名", "备注"]) == []


def test_result_columns_tables() -> None:
    assert len(RESULT_COLUMNS["en"]) == len(RESULT_COLUMNS["zh"]) == 11
    assert RESULT_COLUMNS["en"][0] == "status"
    assert RESULT_COLUMNS["zh"][-1] == "查询时间"


def test_data_row_as_header_is_masked_in_the_message() -> None:
    # A file without a header row: its first person must not be printed in full.
    with pytest.raises(ColumnError) as caught:
        find_columns(["王小明", "11010119900307803X", "13812345678"])
    message = str(caught.value)
    for value in ("王小明", "11010119900307803X", "13812345678", "0119900307", "1234567"):
        assert value not in message
    assert "needs a header row" in message


def test_long_header_lists_are_cut() -> None:
    headers = [f"col{i}" for i in range(100)]
    with pytest.raises(ColumnError) as caught:
        find_columns(headers)
    assert "(60 more)" in str(caught.value)
    assert "col99" not in str(caught.value)


# --- the header row -----------------------------------------------------------------------------


def test_header_found_below_a_title_and_blank_rows() -> None:
    rows = [(1, ["2024年1月客户名单"]), (2, []), (3, ["", ""]), (4, ["姓名", "身份证号", "手机号"])]
    assert find_header(rows) == (4, ColumnMap(0, 1, 2))


def test_header_by_override_names() -> None:
    rows = [(1, ["名单"]), (2, ["客户名称", "证件", "电话"])]
    names = ColumnNames(realname="客户名称", idcard="证件", mobile="电话")
    assert find_header(rows, names) == (2, ColumnMap(0, 1, 2))


def test_a_row_with_two_candidates_is_the_header_and_says_so() -> None:
    rows = [(1, ["名单"]), (2, ["姓名", "身份证号", "手机", "联系电话"])]
    with pytest.raises(ColumnError, match="more than one mobile column"):
        find_header(rows)


def test_header_search_stops_at_the_limit() -> None:
    rows = [(n, ["说明"]) for n in range(1, 21)] + [(21, ["姓名", "身份证号", "手机号"])]
    with pytest.raises(ColumnError) as caught:
        find_header(rows)
    message = str(caught.value)
    assert message.startswith("no name column found")
    assert "Headers found: 说明" in message
    assert message.endswith(
        "(looked for a header row with the name, ID and mobile columns in the first 20 rows; "
        "if it is further down, pass --header-row N)"
    )
    assert find_header(rows, limit=21)[0] == 21


def test_headers_in_messages_stay_on_one_line() -> None:
    # Third-party workbooks have headers with line breaks, and UTF-16 read as bytes (NULs).
    with pytest.raises(ColumnError) as caught:
        find_columns(["Line 1\nLine 2", "T\x00i\x00t\x00e\x00l", "x\r\ny"])
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message and "\x00" not in message
    assert "Headers found: Line 1 Line 2, Titel, x y" in message
