"""Sample ParallelRunStep entry script: scores product reviews with a tiny word-list model.

It is written exactly as for Azure ML's ParallelRunStep: init() loads the "model" once per
worker, run(mini_batch) gets a pandas DataFrame and returns one row per review it scored.
"""
import argparse
import time

import pandas as pd
from azureml_user.parallel_run import EntryScript

MODEL = None


def init():
    global MODEL
    parser = argparse.ArgumentParser()
    parser.add_argument("--threshold", type=float, default=0.0)
    args, _ = parser.parse_known_args()
    # Stands in for loading a real model from disk.
    time.sleep(0.2)
    MODEL = {
        "positive": {"great", "excellent", "love", "perfect", "fast", "sturdy", "happy", "recommend"},
        "negative": {"broken", "slow", "refund", "poor", "awful", "late", "cheap", "disappointed"},
        "threshold": args.threshold,
    }
    EntryScript().logger.info("model loaded with threshold %s", args.threshold)


def score(text):
    words = text.split()
    pos = sum(w in MODEL["positive"] for w in words)
    neg = sum(w in MODEL["negative"] for w in words)
    return (pos - neg) / max(len(words), 1)


def run(mini_batch: pd.DataFrame) -> pd.DataFrame:
    scores = mini_batch["text"].map(score)
    return pd.DataFrame({
        "id": mini_batch["id"],
        "product": mini_batch["product"],
        "score": scores.round(4),
        "label": ["positive" if s > MODEL["threshold"] else "negative" for s in scores],
    })
