"""``nflow-np info``: describe a model file."""

import numpy as np

from . import io as model_io
from ._cli_common import _load_model, _offset


def _describe(node, indent, lines):
    config = node.get("config", {})
    shown = []
    for key, value in config.items():
        if isinstance(value, dict) and "type" in value or key == "bijectors":
            continue
        if key == "name" and value == node["type"] or value is None and key == "dtype":
            continue
        if isinstance(value, list) and len(value) > 12:
            value = f"[{len(value)} values]"
        shown.append(f"{key}={value}")
    n_params = sum(int(np.prod(r["shape"])) for r in node.get("arrays", {}).values())
    count = f"  ({n_params} values)" if n_params else ""
    lines.append(f"{'  ' * indent}{node['type']}({', '.join(shown)}){count}")
    for key, value in config.items():
        if isinstance(value, dict) and "type" in value:
            _describe(value, indent + 1, lines)
        elif key == "bijectors":
            for child in value:
                _describe(child, indent + 1, lines)


def cmd_info(args):
    from .distributions import Distribution
    from .estimator import FlowDensity
    model = _load_model(args.model)
    spec = model_io.read_spec(args.model)
    flow = model.flow_ if isinstance(model, FlowDensity) else model
    n_params = sum(a.size for _, a in flow.parameters())
    print(f"{args.model}: {type(model).__name__} (model format {spec['format_version']}, written by nflow_np "
          f"{spec.get('nflow_np_version', '?')})")
    if isinstance(model, FlowDensity):
        print(f"flow: {model.flow}, {model.n_layers} layers, hidden {tuple(model.hidden)}")
        print(f"features: {model.n_features_in_}")
        if hasattr(model, "n_context_in_"):
            print(f"context: {model.n_context_in_} column(s) (a conditional density p(x | context))")
        if hasattr(model, "offset_"):
            print(f"outlier threshold: log-density {model.offset_:.6g} (contamination {model.contamination!r})")
    elif isinstance(model, Distribution):
        print(f"event shape: {model.event_shape}")
    print(f"dtype: {getattr(flow, 'dtype', None)}")
    print(f"parameters: {n_params}")
    lines = []
    _describe(spec["root"], 1, lines)
    print("architecture:")
    print("\n".join(lines))
    if isinstance(model, FlowDensity):
        history = model.history_
        if history is not None:
            offset = _offset(model.scale_)
            parts = [f"{history.epochs} epochs", f"{history.steps} steps"]
            if history.best_epoch >= 0:
                parts.append(f"best epoch {history.best_epoch + 1}")
                parts.append(f"train NLL {history.train_loss[history.best_epoch] + offset:.4f}")
                if history.val_loss:
                    parts.append(f"validation NLL {history.val_loss[history.best_epoch] + offset:.4f}")
            parts.append(f"{history.wall_time:.1f} s")
            if history.rejected_steps:
                parts.append(f"{history.rejected_steps} rejected steps")
            if history.stopped_early:
                parts.append("stopped early")
            print("training: " + ", ".join(parts))
        print(f"standardization: mean {np.array2string(model.mean_, precision=4)}, "
              f"scale {np.array2string(model.scale_, precision=4)}")
        state = model.optimizer_state_
        if state is None:
            print("optimizer: not stored (an older file; --resume starts a fresh Adam)")
        else:
            print(f"optimizer: Adam, {state['steps']} steps, lr {state['lr']:.4g}")
    return 0
