"""Per-task heads: read from adapters, swapped onto a backbone and restored."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from conftest import make_tiny_bert, make_tiny_roberta, synthetic_batches
from osrm.adapters import attach_lora, save_adapter
from osrm.errors import OsrmError
from osrm.heads import adapter_head, head_outputs, use_head


@pytest.mark.parametrize(("make", "head_keys"), [
    (make_tiny_bert, {"classifier.weight", "classifier.bias"}),
    (make_tiny_roberta, {"classifier.dense.weight", "classifier.dense.bias",
                         "classifier.out_proj.weight", "classifier.out_proj.bias"}),
])  # fmt: skip
def test_head_from_adapter_on_a_backbone_with_another_label_count(make, head_keys, tmp_path):
    task_model = attach_lora(
        make(seed=0, num_labels=2), LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS")
    )
    with torch.no_grad():
        for p in task_model.base_model.model.classifier.parameters():
            p.normal_()
    save_adapter(task_model, tmp_path / "a")
    head = adapter_head(tmp_path / "a")
    assert set(head) == head_keys and head_outputs(head) == 2
    backbone = make(seed=0, num_labels=5)  # same backbone weights, a 5-way head
    batch = synthetic_batches(3, 4, 4)[0]
    with torch.no_grad():
        expected = task_model.eval()(**batch).logits  # B = 0: the adapter adds nothing
        with use_head(backbone, head) as model:
            got = model(**batch).logits
        assert got.shape == (4, 2)
        torch.testing.assert_close(got, expected)
        assert backbone(**batch).logits.shape == (4, 5)  # restored


def test_bad_heads(tmp_path):
    with pytest.raises(OsrmError, match="cannot read adapter weights"):
        adapter_head(tmp_path)
    with pytest.raises(OsrmError, match="does not exist"):
        with use_head(make_tiny_bert(), {"nohead.weight": torch.zeros(2, 32)}):
            pass
