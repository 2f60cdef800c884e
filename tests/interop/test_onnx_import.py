"""``npconv import``: PyTorch's ``torch.onnx.export`` (the legacy exporter, opset 17) of Sequential networks with
every layer type npconv has, and graphs written by hand, become npconv models that give the same logits."""

import numpy as np
import pytest

from npconv import nn
from npconv.inference import model_input
from npconv.onnx.importer import OnnxImportError, import_onnx
from npconv.train.modelfile import load_model

from .cases import MEAN, STD, pixels, session

TOLERANCE = 1e-5

# torch 2.13 says the legacy exporter, which the issue asks for (it needs no onnxscript), is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def torch_network(torch, flatten="module", seed=0):
    """A Sequential with every layer type npconv has, random weights and non-trivial batch-norm statistics."""
    tnn = torch.nn

    class ViewFlatten(tnn.Module):  # the flatten of many tutorials: written as Shape, Gather, ..., Reshape
        def forward(self, x):
            return x.view(x.size(0), -1)

    class ReshapeFlatten(tnn.Module):
        def forward(self, x):
            return x.reshape(-1, 8 * 7 * 7)

    flat = {"module": tnn.Flatten(), "view": ViewFlatten(), "reshape": ReshapeFlatten()}[flatten]
    torch.manual_seed(seed)
    net = tnn.Sequential(
        tnn.Conv2d(1, 6, 3, padding=1), tnn.BatchNorm2d(6), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Dropout(0.2),
        tnn.Conv2d(6, 8, 3, stride=1, padding=1), tnn.Sigmoid(), tnn.AvgPool2d(3, stride=2, padding=1),
        flat, tnn.Linear(8 * 7 * 7, 24), tnn.BatchNorm1d(24), tnn.Tanh(), tnn.Linear(24, 10),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def torch_export(torch, net, path, fold=True, input_shape=(1, 1, 28, 28)):
    """``torch.onnx.export`` as a user calls it: the legacy exporter, opset 17, a dynamic batch size."""
    torch.onnx.export(net, torch.zeros(*input_shape), str(path), dynamo=False, opset_version=17,
                      do_constant_folding=fold, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def torch_logits(torch, net, images):
    x = torch.from_numpy((pixels(images) - np.float32(MEAN)) / np.float32(STD))
    with torch.no_grad():
        return net(x).numpy()


def npconv_logits(path, images):
    model, config = load_model(path)
    with nn.no_grad():
        return model.eval()(model_input(images, config)), config


@pytest.mark.parametrize("flatten, fold", [("module", True), ("module", False), ("view", True), ("reshape", True)],
                         ids=["Flatten", "Flatten-BN-kept", "view", "reshape"])
def test_a_pytorch_network_imports_and_gives_pytorchs_logits(flatten, fold, torch, onnx, tmp_path, test_images):
    net = torch_network(torch, flatten)
    path = torch_export(torch, net, tmp_path / "net.onnx", fold=fold)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("BatchNormalization" in ops) and (("Shape" in ops) == (flatten == "view")), ops
    notes = import_onnx(path, tmp_path / "net.npz", mean=MEAN, std=STD)
    assert any("digits" in note for note in notes) and any("MNIST" in note for note in notes), notes
    got, config = npconv_logits(tmp_path / "net.npz", test_images)
    expected = torch_logits(torch, net, test_images)
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error <= TOLERANCE, f"the imported model differs from PyTorch by {error:.2e} of the largest logit"
    assert config["normalize_mean"] == MEAN and config["normalize_std"] == STD and config["dataset"] == "mnist"
    assert config["classes"] == [str(i) for i in range(10)] and config["model"] == "net.toml"
    types = [layer["type"] for layer in config["model_layers"]]
    bn2d = ["batchnorm2d"] if not fold else []  # folding writes the first batch norm into the Conv before it
    assert types == ["conv2d", *bn2d, "relu", "maxpool2d", "conv2d", "sigmoid", "avgpool2d", "flatten", "linear",
                     "batchnorm1d", "tanh", "linear"], types


def test_the_imported_weights_are_pytorchs_bit_for_bit(torch, tmp_path):
    net = torch_network(torch)
    import_onnx(torch_export(torch, net, tmp_path / "net.onnx", fold=False), tmp_path / "net.npz")
    model, _ = load_model(tmp_path / "net.npz")
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = [v.numpy() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(ours) == len(theirs)
    for (name, a), b in zip(ours.items(), theirs):
        assert np.array_equal(a, b), name


def test_a_flat_input_mlp_gets_a_flatten_first(torch, tmp_path, test_images):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    path = torch_export(torch, net, tmp_path / "mlp.onnx", input_shape=(1, 784))
    notes = import_onnx(path, tmp_path / "mlp.npz", mean=MEAN, std=STD)
    assert any("flatten layer comes first" in note for note in notes), notes
    got, config = npconv_logits(tmp_path / "mlp.npz", test_images)
    assert [layer["type"] for layer in config["model_layers"]] == ["flatten", "linear", "relu", "linear"]
    x = torch.from_numpy(((pixels(test_images) - np.float32(MEAN)) / np.float32(STD)).reshape(-1, 784))
    with torch.no_grad():
        expected = net(x).numpy()
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()


def graph_model(onnx, nodes, initializers, input_shape=("N", 1, 28, 28), output="y", elem_type=None):
    """A hand-written ONNX model around ``nodes`` (input "x", output ``output``), opset 17."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "handmade",
        [helper.make_tensor_value_info("x", elem_type or TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_matmul_and_add_import_as_a_linear(onnx, ort, tmp_path, test_images):
    from onnx import helper

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((784, 10)).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    proto = graph_model(onnx, [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["m"]),
                               helper.make_node("Add", ["m", "b"], ["y"])], {"w": w, "b": b})
    onnx.save(proto, str(tmp_path / "mm.onnx"))
    import_onnx(tmp_path / "mm.onnx", tmp_path / "mm.npz")
    got, config = npconv_logits(tmp_path / "mm.npz", test_images)
    expected = session(ort, tmp_path / "mm.onnx").run(None, {"x": pixels(test_images)})[0]
    assert config["normalize_mean"] is None and config["normalize_std"] is None
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()
    model, _ = load_model(tmp_path / "mm.npz")
    assert np.array_equal(model[1].weight.data, w.T) and np.array_equal(model[1].bias.data, b)


def test_what_npconv_cannot_follow_is_refused_naming_the_node(onnx, tmp_path):
    from onnx import helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((784, 10)).astype(np.float32)
    flatten = helper.make_node("Flatten", ["x"], ["f"], name="flat")
    cases = {
        "node 'soft' (Softmax): npconv has no layer": [
            flatten, helper.make_node("MatMul", ["f", "w"], ["m"], name="mm"),
            helper.make_node("Softmax", ["m"], ["y"], name="soft")],
        "node 'first' (Relu) and node 'second' (Relu) both use 'f': a branch": [
            flatten, helper.make_node("Relu", ["f"], ["r1"], name="first"),
            helper.make_node("Relu", ["f"], ["r2"], name="second"),
            helper.make_node("Add", ["r1", "r2"], ["s"], name="sum"),
            helper.make_node("MatMul", ["s", "w"], ["y"], name="mm")],
        "node 'pool' (MaxPool): padding": [
            helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("Flatten", ["p"], ["y"], name="flat")],
    }
    for expected, nodes in cases.items():
        onnx.save(graph_model(onnx, nodes, {"w": w}), str(tmp_path / "bad.onnx"))
        with pytest.raises(OnnxImportError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            import_onnx(tmp_path / "bad.onnx", tmp_path / "bad.npz")
        assert not (tmp_path / "bad.npz").exists()
    # A linear layer on images, with no flatten before it: a shape npconv cannot follow.
    onnx.save(graph_model(onnx, [helper.make_node("Gemm", ["x", "w2"], ["y"], name="fc", transB=1)],
                          {"w2": np.zeros((10, 784), np.float32)}), str(tmp_path / "bad.onnx"))
    with pytest.raises(OnnxImportError, match=r"node 'fc' \(Gemm\): .*needs flat input"):
        import_onnx(tmp_path / "bad.onnx", tmp_path / "bad.npz")


@pytest.mark.parametrize("pool, op, layer", [("AdaptiveAvgPool2d", "GlobalAveragePool", "avgpool2d"),
                                             ("AdaptiveMaxPool2d", "MaxPool", "maxpool2d")])
def test_global_pooling_imports_as_a_window_the_size_of_the_image(pool, op, layer, torch, onnx, tmp_path,
                                                                  test_images):
    torch.manual_seed(2)
    tnn = torch.nn
    net = tnn.Sequential(tnn.Conv2d(1, 6, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2), getattr(tnn, pool)(1),
                         tnn.Flatten(), tnn.Linear(6, 10)).eval()
    path = torch_export(torch, net, tmp_path / "gap.onnx")
    assert op in {n.op_type for n in onnx.load(str(path)).graph.node}
    import_onnx(path, tmp_path / "gap.npz", mean=MEAN, std=STD)
    got, config = npconv_logits(tmp_path / "gap.npz", test_images)
    assert config["model_layers"][3] == {"type": layer, "kernel_size": 14, "stride": 14,
                                         **({"padding": 0} if layer == "avgpool2d" else {})}
    expected = torch_logits(torch, net, test_images)
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()


def test_a_hand_written_global_max_pool_imports(onnx, ort, tmp_path, test_images):
    from onnx import helper

    w = np.random.default_rng(3).standard_normal((10, 1)).astype(np.float32)
    nodes = [helper.make_node("GlobalMaxPool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    proto = graph_model(onnx, nodes, {"w": w})
    onnx.save(proto, str(tmp_path / "gmp.onnx"))
    import_onnx(tmp_path / "gmp.onnx", tmp_path / "gmp.npz")
    got, config = npconv_logits(tmp_path / "gmp.npz", test_images)
    assert config["model_layers"][0] == {"type": "maxpool2d", "kernel_size": 28, "stride": 28}
    expected = session(ort, tmp_path / "gmp.onnx").run(None, {"x": pixels(test_images)})[0]
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()


def test_tensors_stored_in_another_file_are_refused(onnx, tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    (tmp_path / "weights.bin").write_bytes(np.zeros((10, 784), np.float32).tobytes())
    w = numpy_helper.from_array(np.zeros((10, 784), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    proto = graph_model(onnx, [helper.make_node("Flatten", ["x"], ["f"]),
                               helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)], {})
    proto.graph.initializer.append(w)
    (tmp_path / "outside.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(OnnxImportError, match="'w' is stored in another file; npconv reads one file only"):
        import_onnx(tmp_path / "outside.onnx", tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_a_reshape_that_does_not_flatten_and_a_computed_weight_are_refused(onnx, tmp_path):
    from onnx import helper

    w = np.zeros((784, 10), np.float32)
    cases = {
        r"node 'r' \(Reshape\): reshapes 1x28x28 images to \[-1, 28, 28\]": [
            helper.make_node("Reshape", ["x", "shape"], ["r"], name="r"),
            helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
        r"node 'fc' \(MatMul\): its weight 'w2' is computed in the graph, not stored": [
            helper.make_node("Relu", ["w"], ["w2"], name="computed"), helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc")],
    }
    for message, nodes in cases.items():
        onnx.save(graph_model(onnx, nodes, {"w": w, "shape": np.array([-1, 28, 28], np.int64)}),
                  str(tmp_path / "bad.onnx"))
        with pytest.raises(OnnxImportError, match=message):
            import_onnx(tmp_path / "bad.onnx", tmp_path / "bad.npz")
        assert not (tmp_path / "bad.npz").exists()
