#!/usr/bin/env python3
"""Writes the bundled sample dataset: data/sample/reviews.parquet (deterministic).

2,000 product reviews with columns id (int64), product (string), lang (string),
rating (int64) and text (string). Needs pyarrow. Run from anywhere:
    python3 data/make_sample.py
"""
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

GOOD = ["great", "excellent", "love", "perfect", "fast", "sturdy", "happy", "recommend"]
BAD = ["broken", "slow", "refund", "poor", "awful", "late", "cheap", "disappointed"]
FILLER = ["the", "battery", "screen", "box", "arrived", "works", "after", "a", "week", "with",
          "my", "kids", "price", "quality", "and", "it", "is", "was", "very", "not"]
PRODUCTS = ["kettle", "headphones", "lamp", "backpack", "keyboard", "blender", "tent", "watch"]
LANGS = ["en", "en", "en", "fr", "de"]


def main():
    rng = random.Random(7)
    rows = {"id": [], "product": [], "lang": [], "rating": [], "text": []}
    for i in range(2000):
        rating = rng.randint(1, 5)
        mood = GOOD if rating >= 4 else BAD if rating <= 2 else GOOD + BAD
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words)), rng.choice(mood))
        rows["id"].append(i)
        rows["product"].append(rng.choice(PRODUCTS))
        rows["lang"].append(rng.choice(LANGS))
        rows["rating"].append(rating)
        rows["text"].append(" ".join(words))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample", "reviews.parquet")
    pq.write_table(pa.table(rows), out, row_group_size=500)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
