import pytest


def test_package_exports_the_training_api_lazily():
    import hf_vlp
    from hf_vlp.training.callbacks import MomentumCallback

    assert hf_vlp.MomentumCallback is MomentumCallback
    assert "ContrastiveCollator" in dir(hf_vlp)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        hf_vlp.Nope


def test_task_heads_are_reachable_through_the_auto_classes():
    from transformers import (
        AutoModelForImageTextToText,
        AutoModelForMaskedLM,
        AutoModelForPreTraining,
        AutoModelForVisualQuestionAnswering,
    )

    import hf_vlp

    expected = {
        (AutoModelForPreTraining, hf_vlp.VlpAlbefConfig): hf_vlp.VlpAlbefForPretraining,
        (AutoModelForMaskedLM, hf_vlp.VlpAlbefConfig): hf_vlp.VlpAlbefForMaskedLM,
        (AutoModelForVisualQuestionAnswering, hf_vlp.VlpAlbefConfig): hf_vlp.VlpAlbefForQuestionAnswering,
        (AutoModelForPreTraining, hf_vlp.VlpBlipConfig): hf_vlp.VlpBlipForPretraining,
        (AutoModelForImageTextToText, hf_vlp.VlpBlipConfig): hf_vlp.VlpBlipForConditionalGeneration,
        (AutoModelForVisualQuestionAnswering, hf_vlp.VlpBlipConfig): hf_vlp.VlpBlipForQuestionAnswering,
    }
    for (auto_class, config_class), model_class in expected.items():
        assert auto_class._model_mapping[config_class] is model_class
