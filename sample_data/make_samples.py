"""Write customers.csv and customers.xlsx: fictional customers, some broken on purpose.

Run `python sample_data/make_samples.py`; the output is the same on every run (fixed seed).
Every person is made up: names are common surname + given-name pairs, ID numbers use real-looking
district codes, plausible birth dates and correct check digits, mobiles are random 13x-19x numbers.
See sample_data/README.md for which rows are broken and why.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

from openpyxl import Workbook
from openpyxl.styles import Font
from stdnum.iso7064 import mod_11_2

HERE = Path(__file__).resolve().parent
HEADERS = ["客户编号", "姓名", "身份证号", "手机号", "备注"]

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾萧田董潘袁蔡蒋余"
GIVEN = [
    "伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟",
    "涛", "明", "超", "秀兰", "霞", "平", "刚", "桂英", "志强", "晓燕", "建华", "海燕", "子涵",
    "浩然", "雨桐", "思远", "嘉怡", "俊杰", "欣怡", "宇轩", "梓萱", "一鸣", "诗琪",
]  # fmt: skip
# Real-looking district codes: Beijing Dongcheng, Shanghai Xuhui, Guangzhou Yuexiu, Shenzhen
# Nanshan, Chengdu Wuhou, Hangzhou Xihu, Wuhan Wuchang, Nanjing Gulou, Xi'an Beilin, Urumqi
# Tianshan.
DISTRICTS = [
    "110101", "310104", "440104", "440305", "510107",
    "330106", "420106", "320106", "610103", "650102",
]  # fmt: skip
MOBILE_PREFIXES = [
    "130", "131", "135", "136", "138", "139", "147", "150", "151", "157", "158",
    "166", "173", "177", "180", "186", "188", "191", "198", "199",
]  # fmt: skip


def idcard(rng: random.Random, born: dt.date | None = None) -> str:
    """A made-up 18-digit ID number with a correct check digit."""
    if born is None:
        born = dt.date(1955, 1, 1) + dt.timedelta(days=rng.randrange(48 * 365))
    body = f"{rng.choice(DISTRICTS)}{born:%Y%m%d}{rng.randrange(1000):03d}"
    return body + mod_11_2.calc_check_digit(body)


def mobile(rng: random.Random) -> str:
    return rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"


def name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + rng.choice(GIVEN)


def ordinary(rng: random.Random, count: int) -> list[list[str]]:
    return [[name(rng), idcard(rng), mobile(rng), ""] for _ in range(count)]


def id_with_x(rng: random.Random) -> str:
    """An ID whose check digit is X (about one in eleven are)."""
    while True:
        value = idcard(rng)
        if value.endswith("X"):
            return value


def wrong_check_digit(value: str) -> str:
    right = value[-1]
    return value[:-1] + ("0" if right != "0" else "1")


def csv_rows(rng: random.Random) -> list[list[str]]:
    people = ordinary(rng, 30)
    repeat = people[3]
    legacy_body = "440305" + "19" + "780512" + "217"  # 15-digit legacy ID 440305780512217
    special = [
        # Valid, but need normalising.
        [name(rng), id_with_x(rng).lower(), mobile(rng), "身份证末位小写x"],
        [name(rng), idcard(rng), "+86 " + mobile(rng), "手机号带+86前缀"],
        [name(rng), legacy_body[:6] + legacy_body[8:], mobile(rng), "15位旧身份证号"],
        ["买买提•艾力", idcard(rng), mobile(rng), "少数民族姓名，间隔号写成•"],
        [*repeat[:3], "重复客户（与C004为同一人）"],
        # Broken on purpose: never sent.
        [name(rng), wrong_check_digit(idcard(rng)), mobile(rng), "校验位错误"],
        [name(rng), "110101199002300" + "12" + "3", mobile(rng), "出生日期不存在（2月30日）"],
        [name(rng), idcard(rng), mobile(rng)[:10], "手机号只有10位"],
        ["", idcard(rng), mobile(rng), "姓名为空"],
        [name(rng) + "2", idcard(rng), mobile(rng), "姓名含数字"],
        [name(rng), "1.10101199001011E+17", mobile(rng), "身份证号被Excel存成数字"],
    ]
    rows = people + special
    return [[f"C{i:03d}", *row] for i, row in enumerate(rows, 1)]


def write_csv(rows: list[list[str]]) -> None:
    with (HERE / "customers.csv").open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(HEADERS)
        writer.writerows(rows)


def xlsx_rows(rng: random.Random) -> list[list[object]]:
    people: list[list[object]] = [[*row] for row in ordinary(rng, 32)]
    special: list[list[object]] = [
        [name(rng), idcard(rng), int(mobile(rng)), "手机号存成数字（可用）"],
        [name(rng), id_with_x(rng).lower(), mobile(rng), "身份证末位小写x"],
        ["热依拉・买买提", idcard(rng), "0086-" + mobile(rng), "间隔号写成・，手机号带0086"],
        [*people[5][:2], _spaced(str(people[5][2])), "重复客户（与X006为同一人，手机号带空格）"],
        [name(rng), wrong_check_digit(idcard(rng)), mobile(rng), "校验位错误"],
        [name(rng), int(idcard(rng)[:15] + "000"), mobile(rng), "身份证号存成数字，后三位丢失"],
        [name(rng), idcard(rng), "1" + "2" + mobile(rng)[2:], "手机号以12开头"],
        [name(rng) + "3", idcard(rng), mobile(rng), "姓名含数字"],
    ]
    rows = people + special
    return [[f"X{i:03d}", *row] for i, row in enumerate(rows, 1)]


def _spaced(mobile: str) -> str:
    """138 1234 5678: how people type mobiles; normalises to the same number."""
    return f"{mobile[:3]} {mobile[3:7]} {mobile[7:]}"


def write_xlsx(rows: list[list[object]]) -> None:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "客户"
    sheet.append(HEADERS)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in rows:
        sheet.append(row)
    for cells in sheet.iter_rows(min_row=2):
        for cell in cells[2:4]:
            if isinstance(cell.value, str):
                cell.number_format = "@"  # text, as a careful export would
            else:
                cell.number_format = "0"  # the number cells a careless export leaves
    for letter, width in zip("ABCDE", (10, 14, 22, 15, 30), strict=True):
        sheet.column_dimensions[letter].width = width
    stamp = dt.datetime(2024, 1, 1)
    workbook.properties.created = workbook.properties.modified = stamp
    workbook.save(HERE / "customers.xlsx")


def main() -> None:
    rng = random.Random(20240101)
    write_csv(csv_rows(rng))
    write_xlsx(xlsx_rows(rng))


if __name__ == "__main__":
    main()
