"""Boosted trees stacked under the network, inside the one model file (``data.stacking``).

Two LightGBM boosters on the engineered aggregates (:mod:`churnformer.data.aggregates`), one for churn at the
main horizon and one for its spend (Tweedie), are fitted after featurization; their predictions join the
aggregates the network reads (:mod:`churnformer.modeling.fusion`), so the network learns how far to trust
them and how to combine them with the sequence, at every horizon of every head. On a few thousand labelled
customers boosted trees on aggregates rank spend more steadily than a network alone, and the two carry
different signal (issue 34's record): stacked, the combination is learned, not fixed.

The boosters are kept as LightGBM's model text (data, never a pickle) with the checkpoint, and exported as
ONNX tree ensembles (``ai.onnx.ml``, converted by onnxmltools) in front of the network's graph: the model file
keeps its inputs, scoring stays torch-free and runs the trees wherever it runs the network.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import onnx
from onnx import helper, numpy_helper

from churnformer.errors import ConfigError
from churnformer.schema import CUSTOMER_AGG

# The columns the trees add to the aggregates, in order: P(churn at the main horizon), log expected spend.
STACKED_COLUMNS = ("trees_churn_probability", "trees_log_spend")
ONNX_ML_OPSET = 15  # the highest default-domain opset onnxmltools' LightGBM converter targets
_STACKED_INPUT = "stacked_customer_agg"  # the network's aggregates input, inside the merged graph


@dataclass(frozen=True)
class StackedTrees:
    """The two boosters as LightGBM model text, and the number of aggregates they read."""

    churn: str
    spend: str
    n_features: int

    def boosters(self) -> tuple:
        lgb = stacking_extra("lightgbm")
        return lgb.Booster(model_str=self.churn), lgb.Booster(model_str=self.spend)

    def predict(self, aggregates: np.ndarray) -> np.ndarray:
        """(rows, 2) float32: the :data:`STACKED_COLUMNS` of ``aggregates`` (NaN: missing, as LightGBM reads it)."""
        churn, spend = self.boosters()
        values = np.asarray(aggregates, dtype=np.float64)
        return np.stack([churn.predict(values), spend.predict(values, raw_score=True)], axis=1).astype(np.float32)

    def to_state(self) -> dict:
        return {"churn": self.churn, "spend": self.spend, "n_features": self.n_features}

    @classmethod
    def from_state(cls, state: dict | None) -> StackedTrees | None:
        return None if not state else cls(str(state["churn"]), str(state["spend"]), int(state["n_features"]))

    def under(self, network: onnx.ModelProto) -> onnx.ModelProto:
        """``network`` (exported with :data:`STACKED_COLUMNS` appended to its aggregates input) with the trees
        in front: its aggregates input is the file's again, and the trees' columns are computed from it."""
        nodes, opsets = self._tree_nodes()
        graph = network.graph
        for node in graph.node:
            node.input[:] = [_STACKED_INPUT if name == CUSTOMER_AGG else name for name in node.input]
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([1], dtype=np.int64), "stack_one"),
                numpy_helper.from_array(np.array([2], dtype=np.int64), "stack_two"),
            ]
        )
        nodes += [
            helper.make_node("Slice", ["stack_probabilities", "stack_one", "stack_two", "stack_one"], ["stack_p"]),
            helper.make_node("Concat", [CUSTOMER_AGG, "stack_p", "stack_log_spend"], [_STACKED_INPUT], axis=1),
        ]
        network_nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend([*nodes, *network_nodes])  # the trees first: the graph stays in topological order
        aggregates = next(i for i in graph.input if i.name == CUSTOMER_AGG)
        aggregates.type.tensor_type.shape.dim[1].dim_value = self.n_features
        for domain, version in opsets.items():
            if domain and all(o.domain != domain for o in network.opset_import):
                network.opset_import.append(helper.make_opsetid(domain, version))
        onnx.checker.check_model(network)
        return network

    def _tree_nodes(self) -> tuple[list[onnx.NodeProto], dict[str, int]]:
        """The churn classifier's and the spend regressor's tree-ensemble nodes, reading the aggregates input:
        the churn probabilities (rows, 2) as ``stack_probabilities`` and the raw spend score as
        ``stack_log_spend``; and the opsets they need."""
        stacking_extra("onnxmltools")
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        churn, spend = self.boosters()
        types = [(CUSTOMER_AGG, FloatTensorType([None, self.n_features]))]
        converted = {
            "churn": convert_lightgbm(churn, initial_types=types, zipmap=False, target_opset=ONNX_ML_OPSET),
            "spend": convert_lightgbm(spend, initial_types=types, target_opset=ONNX_ML_OPSET),
        }
        outputs = {"TreeEnsembleClassifier": ["stack_label", "stack_probabilities"]}
        outputs["TreeEnsembleRegressor"] = ["stack_log_spend"]
        nodes, opsets = [], {}
        for name, model in converted.items():
            tree = next(n for n in model.graph.node if n.op_type in outputs)
            tree.output[:] = outputs[tree.op_type]
            tree.name = f"stack_{name}_trees"
            nodes.append(tree)
            opsets.update({o.domain: o.version for o in model.opset_import})
        return nodes, opsets


def stacking_extra(module: str) -> ModuleType:
    """``module`` of the stacking extra, or an error that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"this model stacks boosted trees under its network; fitting or exporting them needs {module}: "
            "pip install 'churnformer[stacking]' (scoring the exported model.onnx does not)"
        ) from error


def stacked_example(aggregates: np.ndarray) -> np.ndarray:
    """An export example's aggregates with the trees' columns appended (any finite values trace the graph)."""
    extra = np.zeros((len(aggregates), len(STACKED_COLUMNS)), dtype=np.float32)
    return np.concatenate([aggregates, extra], axis=1)
