"""Split Fashion-MNIST from a pre-trained body: the paper's conditions on offline data (issue 14).

The paper's networks start from a pre-trained body (ImageNet for CORe50, CIFAR-10 for iCIFAR-100,
sec. 4.2-4.3) and replace the classifier. Here the body is pre-trained on a held-out slice of the
Fashion-MNIST training images; the stream (5 batches x 2 classes, SIT) uses the other training
images, the test set is the official one (cljax/pretraining.py). Argument: the slice,

- all10: a stratified 10% of the training images (6,000), every class (like ImageNet for CORe50);
- half5: 6,000 images of classes 0-4 only (like CIFAR-10 for iCIFAR-100);
- scratch: the control: all10's images held out, random initialisation, the same stream.

python -m cljax.main --config=configs/fashion_pretrained.py:all10 --workdir=runs/fashion_pretrained_all10

The first run pre-trains (cached in <workdir>/pretrained/, reused by reruns) unless
--config.init_checkpoint names a checkpoint (scripts/pretrain.py --slice=all10 writes one). Every
strategy starts its own classifier (init_head='fresh'): the slice's head is not loaded.
"""

from cljax.config import base_config


def get_config(arg: str = "all10"):
    c = base_config()
    c.dataset = "fashion_mnist"
    c.pretrain.slice = arg  # validated with the config: none | all10 | half5 | scratch
    c.init_head = "fresh"
    c.num_runs = 5
    c.hidden_sizes = (256,)
    c.epochs_first = 2
    c.epochs = 2
    c.batch_size = 64
    c.cumulative.epochs_first = 2
    c.cumulative.epochs = 2
    # Pre-training on the slice: Adam, 10 epochs (6,000 images: ~940 steps).
    c.pretrain.update(epochs=10, lr=0.001, batch_size=64, optimizer="adam")
    # Hyperparameters: configs/fashion_mnist.py's values as the starting point of the sweep.
    c.lwf.update(map_from=(0.66, 0.9), map_to=(0.6, 0.9), lr=0.01)
    c.ewc.update(strength=2e6, max_f=1e-4, lr=0.005, epochs=1)
    c.si.update(strength=2e5, max_f=1e-3, w_first=1e-3, w_rest=1e-2, lr=0.005, epochs=1)
    c.cwr.epochs = 1
    c.cwr_plus.epochs = 2
    c.ar1.epochs = 2
    return c
