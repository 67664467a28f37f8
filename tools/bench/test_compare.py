"""Unit tests of compare.py's bookkeeping (no engines run): `python tools/bench/test_compare.py`."""
from __future__ import annotations

import pathlib
import sys
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import compare  # noqa: E402


def sdrt_report(total, sample, rss=None, child_rss=100):
    return {"load_ms": 50.0, "runs_total_ms": [total], "peak_rss_bytes": rss, "child_max_rss_bytes": child_rss,
            "median_ms": {"total": total, "prepare": 1.0, "text_encode": 2.0, "sample": sample, "decode": 3.0,
                          "save": 1.0},
            "onnx_ms": {"text_encoder": 1.0, "unet": sample - 1, "vae_decoder": 2.0, "total": sample + 2}}


class SummarizeSdrt(unittest.TestCase):
    def test_interleaved_reports_give_medians_over_rounds(self):
        reports = [sdrt_report(10.0, 8.0), sdrt_report(30.0, 20.0, rss=500), sdrt_report(20.0, 12.0)]
        s = compare.summarize_sdrt(reports, steps=4)
        self.assertEqual(s["median_ms"]["total"], 20.0)
        self.assertEqual(s["per_step_ms"], 3.0)  # median sample 12 / 4 steps
        self.assertEqual(s["median_ms"]["unet"], 11.0)
        self.assertEqual(s["peak_rss_bytes"], 100)  # median of 100, 500, 100
        self.assertEqual(len(s["runs_ms"]), 3)

    def test_block_report_keeps_sdrts_own_median(self):
        rep = sdrt_report(25.0, 10.0)
        rep["runs_total_ms"] = [20.0, 25.0, 90.0]
        s = compare.summarize_sdrt([rep], steps=10)
        self.assertEqual(s["median_ms"]["total"], 25.0)
        self.assertEqual(s["per_step_ms"], 1.0)


class Table(unittest.TestCase):
    def test_ratios_are_sdrt_over_other_and_missing_values_stay_empty(self):
        results = {
            "in_process": {
                "sdrt": {"median_ms": {"total": 50.0}, "per_step_ms": 2.0, "load_ms": 10.0, "peak_rss_bytes": 2**21},
                "optimum": {"median_ms": {"total": 100.0}, "per_step_ms": 4.0, "load_ms": 40.0,
                            "peak_rss_bytes": 2**22},
            },
            "whole_process": {},
        }
        rows = {r["metric"]: r for r in compare.table(results, ["sdrt", "optimum", "torch"])}
        self.assertEqual(rows["end-to-end (in-process) [ms]"]["sdrt/optimum"], 0.5)
        self.assertEqual(rows["load [ms]"]["sdrt/optimum"], 0.25)
        self.assertEqual(rows["peak RSS (in-process) [MiB]"]["sdrt"], 2.0)
        self.assertIsNone(rows["per step [ms]"]["sdrt/torch"])
        text = compare.format_table(list(rows.values()), ["sdrt", "optimum", "torch"])
        self.assertIn("sdrt/optimum", text.splitlines()[0])


if __name__ == "__main__":
    unittest.main()
