"""Reads billing exports back with independent readers (pandas, openpyxl, pyarrow), as finance
and data platforms would, and prints what it found as JSON for the e2e tests to compare.

usage: finance-check.py CSV XLSX PARQUET
"""
import json
import sys
from decimal import Decimal

import openpyxl
import pandas
import pyarrow.parquet


def check_csv(path):
    raw = open(path, "rb").read()
    frame = pandas.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    amounts = [Decimal(a) for a in frame["金额(元)"]]
    return {
        "bom": raw.startswith(b"\xef\xbb\xbf"),
        "columns": list(frame.columns),
        "rows": len(frame),
        "total": str(sum(amounts, Decimal("0.00"))),
        "tenants": sorted(set(frame["租户"])),
        "tenant_names": sorted(set(frame["租户名称"])),
    }


def check_xlsx(path):
    book = openpyxl.load_workbook(path, read_only=True)
    summary, detail = book["汇总"], book["明细"]
    summary_rows = list(summary.iter_rows(values_only=True))
    total_row = next(r for r in summary_rows if r and r[0] == "合计")
    detail_rows = list(detail.iter_rows(values_only=True))
    header = list(detail_rows[0])
    amount = header.index("金额(元)")
    # A spreadsheet number is a double: to the fen, it is the exact amount.
    detail_total = sum((Decimal(repr(r[amount])).quantize(Decimal("0.01")) for r in detail_rows[1:]), Decimal("0.00"))
    return {
        "sheets": book.sheetnames,
        "summary_total": str(Decimal(repr(total_row[5])).quantize(Decimal("0.01"))),
        "detail_rows": len(detail_rows) - 1,
        "detail_total": str(detail_total),
        "header": header,
    }


def check_parquet(path):
    table = pyarrow.parquet.read_table(path)
    rows = table.to_pylist()
    keys = {(r["tenant"], r["resource"], r["site"], r["gpu_model"], r["hour"], r["corrects_month"]) for r in rows}
    return {
        "schema": {field.name: str(field.type) for field in table.schema},
        "rows": len(rows),
        "unique_rows": len(keys),
        "total": str(sum((r["amount_cny"] for r in rows), Decimal("0.00"))),
        "hours_utc": sorted({r["hour"].isoformat() for r in rows})[:1],
    }


if __name__ == "__main__":
    csv_path, xlsx_path, parquet_path = sys.argv[1:4]
    print(json.dumps({"csv": check_csv(csv_path), "xlsx": check_xlsx(xlsx_path), "parquet": check_parquet(parquet_path)}, ensure_ascii=False))
