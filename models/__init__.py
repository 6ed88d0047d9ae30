"""edgeml's built-in designs (the model zoo) and the full-precision training stack.

``DESIGN_MODULES`` is the registry: design name -> the module whose ``DESIGNS`` dict
holds its :class:`~edgeml.models.zoo.DesignSpec`. It lives here, free of imports, so
the command line can list the designs without importing torch.
"""

DESIGN_MODULES: dict[str, str] = {
    "jet": "edgeml.models.jets",
    "mlp": "edgeml.models.digits",
    "cnn": "edgeml.models.digits",
    "econt": "edgeml.models.econt",
    "rn08": "edgeml.models.resnet",
    "cgm": "edgeml.models.cgm",
    "ssm": "edgeml.models.ssm",
    "wavecast": "edgeml.models.wavecast",
    "dlwp": "edgeml.models.dlwp",
    "dlwp_fno": "edgeml.models.dlwp",
    "dlwp_unet": "edgeml.models.dlwp",
    "pinn": "edgeml.models.pinn",
    "resnet_skip": "edgeml.models.skipnets",
    "resnet_noskip": "edgeml.models.skipnets",
    "sharpbalance": "edgeml.models.sharpbalance",
    "randnla": "edgeml.models.randnla",
    "sane": "edgeml.models.sane",
    "trsqp": "edgeml.models.trsqp",
    "molnet_fp": "edgeml.models.molnet",
    "molnet_gcn": "edgeml.models.molnet",
    "tinymem": "edgeml.models.tinymem",
}
