r"""ImageNet-1K at 224² with torchvision's IMAGENET1K_V1 ResNet as the squeezed model (SPEC §1).

Prepare: an ImageFolder tree DATA/{train,val}/<wnid>/*.JPEG (val sorted into class folders), and the
torchvision weights, e.g. `python -c "import torch, torchvision; torch.save(torchvision.models.
resnet18(weights='IMAGENET1K_V1').state_dict(), 'resnet18_v1.pth')"` on a machine with a network.

  python -m sre2l_jax.main \
      --config=configs/imagenet.py:squeeze,weights=resnet18_v1.pth,data_dir=DATA --workdir=W
  python -m sre2l_jax.main --config=configs/imagenet.py:recover,ipc=50,data_dir=DATA --workdir=W
  python -m sre2l_jax.main --config=configs/imagenet.py:validate,ipc=50,data_dir=DATA --workdir=W
Options: arch=resnet18|resnet50 (α_BN is per arch: ResNet-50's BN loss is ~100× larger),
ipc=N, weights=PATH.pth, data_dir=DIR, tfds=1 (read `imagenet2012` with tfds.data_source instead).
"""

from sre2l_jax import configlib, recipes


def get_config(arg: str | None = None):
    arg = configlib.parse_arg(arg, arch="resnet18", ipc=50, weights="", data_dir="", tfds=False,
                              alpha_bn=0.0)
    c = configlib.base_config()
    c.stage, c.runlocal = arg.stage, arg.runlocal
    recipes.imagenet_recipe(c)
    c.data.name, c.data.num_classes, c.data.dir = "imagenet2012", 1000, arg.data_dir
    if arg.tfds:
        c.data.source, c.data.tfds_name, c.data.eval_split = "tfds", "imagenet2012", "validation"
    c.model.arch = arg.arch
    c.squeeze.torchvision_weights = arg.weights
    c.recover.ipc = arg.ipc
    # The authors' α_BN 0.01 is for ResNet-18; ResNet-50's BN loss is ~100× larger (SPEC §2).
    c.recover.alpha_bn = arg.alpha_bn or (0.01 if arg.arch in ("resnet18", "resnet34") else 1e-4)
    c.student.arch = arg.arch
    if arg.runlocal:
        configlib.shrink_for_runlocal(c)
    return configlib.lock(c)
