"""The perturbation engine and what it is built from, one concern per module:

- `seeds`: pure integer seed functions (step and tensor seeds), no stateful RNG;
- `table`: the noise table, z read at seeded offsets (the default generator);
- `inplace`: in-place updates of weights of any dtype, without whole-tensor temporaries;
- `rounding`: stochastic rounding of half-precision updates;
- `residuals`: exact bf16, the 16 bits fp32 has beyond bf16 kept beside each weight;
- `engine`: `PerturbationEngine`, which regenerates z per tensor and sweeps it over the parameters in place.
"""

from zoft.perturb.engine import NOISE_KINDS, PerturbationEngine
from zoft.perturb.inplace import InPlace
from zoft.perturb.rounding import MIXED_CHUNK
from zoft.perturb.seeds import mix, splitmix64, step_seed, tag_id, tensor_seed
from zoft.perturb.table import SIGN_BITS, TABLE_BITS, TABLE_MIN, WINDOW, noise_table, table_bytes

__all__ = ["MIXED_CHUNK", "NOISE_KINDS", "SIGN_BITS", "TABLE_BITS", "TABLE_MIN", "WINDOW", "InPlace",
           "PerturbationEngine", "mix", "noise_table", "splitmix64", "step_seed", "tag_id", "table_bytes",
           "tensor_seed"]
