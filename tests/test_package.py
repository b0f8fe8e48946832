import pytest


def test_package_exports_the_training_api_lazily():
    import hf_vlp
    from hf_vlp.training.callbacks import MomentumCallback

    assert hf_vlp.MomentumCallback is MomentumCallback
    assert "ContrastiveCollator" in dir(hf_vlp)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        hf_vlp.Nope
