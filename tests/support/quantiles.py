"""What a percentile read from a sketch (analysis.sketches) may be: within the sketch's
relative accuracy of a value between the two order statistics around that rank."""
import numpy as np

from agent.analysis.sketches import RELATIVE_ACCURACY


def near_quantile(value: float, values, q: float) -> bool:
    values = np.asarray(values, dtype=float)
    low, high = np.quantile(values, q, method="lower"), np.quantile(values, q, method="higher")
    return low * (1 - RELATIVE_ACCURACY) - 1e-12 <= value <= high * (1 + RELATIVE_ACCURACY) + 1e-12
