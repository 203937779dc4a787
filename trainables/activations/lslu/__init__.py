"""LSLU in one package (DESIGN.md §2): the module, its specification and every kernel, with one place that chooses.

    module.py         the ``LSLU`` nn.Module and its ``lslu`` registry entry
    reference.py      the specification in plain PyTorch ops: f, f', the series and its hand backward, the site
    dispatch.py       the only code that reads the kernel switch and picks a route; its docstring is the table
    closed_form.py    the ReLU series as one clamp of one affine map (ClosedForm, ReluSeries)
    cpu_kernel.py     the compiled CPU kernel for the series and the depthwise conv (cpu_kernel.cpp, via ctypes)
    cpu_depthwise.py  the depthwise conv's CPU backward by PyTorch's ops (two forward convs, a matrix product)
    cpu_site.py       a CPU training step of the whole site as one autograd function that keeps only x
    triton_series.py  the series as two Triton kernels (CUDA)
    triton_site.py    the series and the depthwise conv as Triton kernels that never write f(y_n) (CUDA, opt-in)

The backends decide nothing: dispatch.py passes them the functions it chose.
"""

from trainables.activations.lslu.dispatch import activation_conv, eager_kernels, kernel_choice
from trainables.activations.lslu.module import GRANULARITIES, LSLU
from trainables.activations.lslu.reference import BASES

__all__ = ["BASES", "GRANULARITIES", "LSLU", "activation_conv", "eager_kernels", "kernel_choice"]
