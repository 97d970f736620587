"""The last guard against a wrong encoding: names that cannot be real are never sent."""

from __future__ import annotations

import pytest

from batch_enricher.plausible import NameProfile, implausible, profile

HAN = NameProfile(han=True)
LATIN = NameProfile(han=False)

# What 张三, 李四 and a Latin name become when a file is read in the wrong encoding.
MOJIBAKE = {
    "iso8859-5 (GBK bytes)": "ХЕИэ",
    "latin-1 (GBK bytes)": "ÕÅÈý",
    "cp932 (latin-1 ©)": "Josｩ",
    "cp1251 (latin-1 ü)": "Mьller",
    "cp437 (UTF-8 bytes)": "σ╝á",
    "damaged bytes": "李\ufffd",
    "a NUL": "张\x00三",
}


def test_a_file_of_chinese_names_has_a_han_profile() -> None:
    assert profile(["张三", "李四", "JOHN SMITH", None, 13812345678, " "]) == HAN
    assert profile(["José", "Ayşe Nur", "张三"]) == LATIN
    assert profile([]) == LATIN
    assert profile(["张三"] + ["Li Si"] * 5, limit=1) == HAN  # only a sample is read


@pytest.mark.parametrize(
    "name", ["张三", "买买提·艾力", "JOHN SMITH", "张三\u00a0", "𠀀明", 123, None]
)
def test_real_names_pass_in_a_chinese_file(name: object) -> None:
    assert implausible(name, HAN) is None


@pytest.mark.parametrize(
    "name", ["Ayşe Nur", "Nguyễn Văn An", "José Müller", "Zoë", "O'Brien", "Đức", "张三"]
)
def test_real_names_pass_in_a_latin_file(name: str) -> None:
    assert implausible(name, LATIN) is None


@pytest.mark.parametrize("what", MOJIBAKE)
def test_mojibake_never_passes_in_a_chinese_file(what: str) -> None:
    reason = implausible(MOJIBAKE[what], HAN)
    assert reason is not None and "wrong encoding" in reason


@pytest.mark.parametrize(
    "what", ["cp932 (latin-1 ©)", "cp1251 (latin-1 ü)", "cp437 (UTF-8 bytes)", "damaged bytes"]
)
def test_mojibake_that_is_certain_anywhere(what: str) -> None:
    assert implausible(MOJIBAKE[what], LATIN) is not None


def test_reasons_name_the_kind_of_character_not_the_name() -> None:
    reason = implausible("ХЕИэ", HAN)
    assert reason is not None
    assert reason.startswith("holds Cyrillic letters while the file's names are Chinese")
    assert "ХЕИэ" not in reason
    assert implausible("Mьller", LATIN) == (
        "mixes Cyrillic and Latin letters: the file was probably read in the wrong encoding "
        "(see --encoding)"
    )
