"""RankNet scorers: the capture-quality gate and the grade ranker, from pairs to a bundle entry.

    kenpin train-ranker --data DIR --bundle B                        # quality gate from DIR/train/good
    kenpin train-ranker --bundle B --role grade --ratings FILE.csv   # grade from operator judgements
    kenpin eval-ranker  --bundle B --data DIR --json Q.json --report R   # held-out degradations on test/good
    kenpin eval-ranker  --bundle B --role grade --ratings HELDOUT.csv    # Kendall τ, NDCG@10
    kenpin mask-ratings --data DIR --out RATINGS                     # severity by mask area, two halves

The station's side (the input a ranker reads, the gate and the grader) is ``device.quality``;
the ONNX export and int8 parity gate is ``export.ranker``.
"""
