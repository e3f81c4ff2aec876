//! Derives sub-models from the verified ONNX model, in memory, when it is loaded: the
//! shared engine needs the timbral front-end with a free time axis and the per-patch
//! remainder fed those features (`../shared/MUSICNN.md` §8); [`shared_engine`] is that
//! recipe, the rest of this module its rewrites.
//!
//! Made from the model's own bytes each time, nothing derived is ever written or shipped
//! (the model's licence applies to it), and the source is the file whose sha256 (or
//! probe) was checked. The rewrites work on the ONNX schema's own messages (`onnx`,
//! compiled from `proto/onnx.proto` by `build.rs`), so every field of the model that a
//! rewrite does not touch is kept as it was.

use std::collections::HashSet;

use prost::Message;

use crate::features::{BANDS, PATCH_FRAMES};
use crate::model::{ConvAs1d, Manifest};

/// The ONNX schema's messages (`proto/onnx.proto`).
#[allow(clippy::all, clippy::pedantic)]
mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use onnx::attribute_proto::AttributeType;
use onnx::tensor_proto::DataType;
use onnx::tensor_shape_proto::{dimension, Dimension};
use onnx::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("the model is not a well-formed ONNX file: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the model is not the graph this engine was built for: {0}")]
    Malformed(&'static str),
    #[error("the model has no tensor {0:?}: not the graph this engine was built for")]
    Missing(String),
}

/// The four models of the shared engine, as ONNX bytes: the timbral front-end without
/// time padding (a track's interior), with only a patch's first or last frames padded
/// (its edges, as the whole model sees them), and the per-patch rest.
pub struct SharedModels {
    pub front: Vec<u8>,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub rest: Vec<u8>,
}

/// The shared engine's models from the whole model's bytes, as the manifest's `shared`
/// section says to cut them. `block` is the channel block `pool_first` pads to (1: none).
pub fn shared_engine(bytes: &[u8], m: &Manifest, block: usize) -> Result<SharedModels, GraphError> {
    let c = &m.shared;
    let mut pooled = Model::parse(bytes)?;
    if !c.pool_first.is_empty() {
        pooled.pool_first(&c.pool_first, block)?;
    }
    let (front_cut, rest_cut) = cuts(m);
    let front_with = |begin, end| -> Result<Vec<u8>, GraphError> {
        let mut padded = pooled.clone();
        padded.with_time_pads(&c.timbral_convs, begin, end)?;
        Ok(padded.extract(&front_cut)?.to_bytes())
    };
    let halo = c.halo as i64;
    let (front, head, tail) = (
        front_with(0, 0)?,
        front_with(halo, 0)?,
        front_with(0, halo)?,
    );
    if let Some(rw) = &c.conv_1d {
        pooled.conv_as_1d(rw)?;
    }
    let rest = pooled.extract(&rest_cut)?.to_bytes();
    Ok(SharedModels {
        front,
        head,
        tail,
        rest,
    })
}

/// The two cuts of the shared engine: the timbral front-end with a free time axis, and
/// the per-patch rest fed the patch and its timbral features.
fn cuts(m: &Manifest) -> (Cut, Cut) {
    let c = &m.shared;
    let raw = |t: Dim| Port {
        name: c.raw.clone(),
        dims: vec![
            Dim::Free("batch"),
            Dim::Fixed(1),
            t,
            Dim::Fixed(BANDS as i64),
        ],
    };
    let timbral = |t: Dim| -> Vec<Port> {
        c.timbral
            .iter()
            .map(|name| Port {
                name: name.clone(),
                dims: vec![Dim::Free("batch"), Dim::Fixed(c.channels as i64), t.clone()],
            })
            .collect()
    };
    let front = Cut {
        inputs: vec![raw(Dim::Free("time"))],
        outputs: timbral(Dim::Free("time")),
        pass_through: vec![c.pinned_reshape.clone()],
    };
    let patch = Dim::Fixed(PATCH_FRAMES as i64);
    let mut inputs = vec![raw(patch.clone())];
    inputs.extend(timbral(patch));
    let rest = Cut {
        inputs,
        outputs: vec![
            Port {
                name: m.embedding_output.clone(),
                dims: vec![Dim::Free("batch"), Dim::Fixed(m.embedding_dim as i64)],
            },
            Port {
                name: m.tags_output.clone(),
                dims: vec![Dim::Free("batch"), Dim::Fixed(m.tags.len() as i64)],
            },
        ],
        pass_through: vec![],
    };
    (front, rest)
}

/// A tensor dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(i64),
    /// A named free dimension (batch, time).
    Free(&'static str),
}

/// One edge of the cut: a tensor name and the float shape it gets as a graph input or
/// output.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    pub dims: Vec<Dim>,
}

/// What to cut out of a model.
#[derive(Debug, Clone)]
pub struct Cut {
    /// Tensors that become the graph's inputs: nothing before them is kept.
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// Nodes (by name) replaced by an `Identity` of their first input: reshapes whose
    /// constant shape pins a dimension the cut sets free.
    pub pass_through: Vec<String>,
}

/// A node that multiplies and accumulates: `per_element` MACs for each element of
/// `output` (a tensor whose shape only a run with real inputs knows).
#[derive(Debug, Clone, PartialEq)]
pub struct MacSite {
    pub node: String,
    pub output: String,
    pub per_element: u64,
}

/// A parsed ONNX model: its graph, and the rest of the model (opsets, IR version,
/// metadata) kept as it was.
#[derive(Debug, Clone)]
pub struct Model {
    top: ModelProto,
    graph: GraphProto,
}

impl Model {
    pub fn parse(bytes: &[u8]) -> Result<Self, GraphError> {
        let mut top = ModelProto::decode(bytes)?;
        let graph = top.graph.take().ok_or(GraphError::Malformed("no graph"))?;
        Ok(Self { top, graph })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut model = self.top.clone();
        model.graph = Some(self.graph.clone());
        model.encode_to_vec()
    }

    fn node(&self, name: &str) -> Result<&NodeProto, GraphError> {
        self.graph
            .node
            .iter()
            .find(|n| n.name() == name)
            .ok_or_else(|| GraphError::Missing(name.to_string()))
    }

    fn initializer(&self, name: &str) -> Result<&TensorProto, GraphError> {
        (self.graph.initializer.iter())
            .find(|t| t.name() == name)
            .ok_or_else(|| GraphError::Missing(name.to_string()))
    }

    fn floats(&self, name: &str) -> Result<(Vec<i64>, Vec<f32>), GraphError> {
        let t = self.initializer(name)?;
        Ok((t.dims.clone(), floats(t)?))
    }

    /// The model with only the nodes that compute `cut.outputs` from `cut.inputs`, and
    /// the initializers they use; the graph's inputs and outputs are the cut's.
    pub fn extract(&self, cut: &Cut) -> Result<Model, GraphError> {
        let nodes = &self.graph.node;
        // Walk back from the outputs, stopping at the cut's inputs.
        let cut_in: HashSet<&str> = cut.inputs.iter().map(|p| p.name.as_str()).collect();
        let mut needed: HashSet<&str> = cut.outputs.iter().map(|p| p.name.as_str()).collect();
        let mut keep = vec![false; nodes.len()];
        for (i, n) in nodes.iter().enumerate().rev() {
            if n.output.iter().any(|o| needed.contains(o.as_str())) {
                keep[i] = true;
                let pass = cut.pass_through.iter().any(|p| p == n.name());
                let ins = if pass { &n.input[..1] } else { &n.input[..] };
                for input in ins {
                    if !cut_in.contains(input.as_str()) && !input.is_empty() {
                        needed.insert(input);
                    }
                }
            }
        }
        let kept = || nodes.iter().zip(&keep).filter(|(_, k)| **k).map(|(n, _)| n);
        // Every needed tensor must come from a kept node, an initializer or a cut input.
        let produced: HashSet<&str> = kept()
            .flat_map(|n| n.output.iter().map(String::as_str))
            .chain(self.graph.initializer.iter().map(|t| t.name()))
            .collect();
        if let Some(name) = needed.iter().find(|n| !produced.contains(**n)) {
            return Err(GraphError::Missing(name.to_string()));
        }
        for p in &cut.inputs {
            if !nodes.iter().any(|n| n.output.contains(&p.name)) {
                return Err(GraphError::Missing(p.name.clone()));
            }
        }
        for name in &cut.pass_through {
            if !kept().any(|n| n.name() == name) {
                return Err(GraphError::Missing(name.clone()));
            }
        }
        let node = kept()
            .map(|n| {
                if cut.pass_through.iter().any(|p| p == n.name()) {
                    identity(n)
                } else {
                    n.clone()
                }
            })
            .collect();
        let graph = GraphProto {
            node,
            name: self.graph.name.clone(),
            initializer: (self.graph.initializer.iter())
                .filter(|t| needed.contains(t.name()))
                .cloned()
                .collect(),
            input: cut.inputs.iter().map(value_info).collect(),
            output: cut.outputs.iter().map(value_info).collect(),
            ..GraphProto::default()
        };
        Ok(Model {
            top: self.top.clone(),
            graph,
        })
    }

    /// Replaces `rw.conv`, a 2-D convolution whose kernel spans the whole width of its
    /// input (`[O, 1, K, C]` over `[B, 1, T, C]`, fed by a reshape of the `[B, C, T]`
    /// tensor `rw.source`), by the 1-D convolution it is (`[O, C, K]` over `rw.source`)
    /// and an `Unsqueeze` to the old output's shape: the same sums, without the transpose
    /// and reshape in front, which become unused and are dropped by [`Model::extract`]
    /// (MUSICNN.md section 8, rewrite 2).
    pub fn conv_as_1d(&mut self, rw: &ConvAs1d) -> Result<(), GraphError> {
        let conv = self.node(&rw.conv)?;
        let [_, weight, bias] = &conv.input[..] else {
            return Err(GraphError::Missing(format!("{} weights and bias", rw.conv)));
        };
        let [out] = &conv.output[..] else {
            return Err(GraphError::Malformed("convolution without one output"));
        };
        let (bias, out) = (bias.clone(), out.clone());
        let (dims, w) = self.floats(weight)?;
        let [o, 1, k, c] = dims[..] else {
            return Err(GraphError::Malformed(
                "convolution kernel is not [O, 1, K, C]",
            ));
        };
        let (o, k, c) = (o as usize, k as usize, c as usize);
        if w.len() != o * k * c || k % 2 == 0 {
            return Err(GraphError::Malformed("convolution kernel size"));
        }
        // [O, 1, K, C] -> [O, C, K]
        let mut kernel = Vec::with_capacity(w.len());
        for oi in 0..o {
            for ci in 0..c {
                kernel.extend((0..k).map(|ki| w[(oi * k + ki) * c + ci]));
            }
        }
        let name = &rw.conv;
        let (w1, axes, flat) = (
            format!("{name}/kernel_1d"),
            format!("{name}/axes_1d"),
            format!("{name}/out_1d"),
        );
        let half = (k / 2) as i64;
        let conv1d = node(
            &format!("{name}/1d"),
            "Conv",
            &[&rw.source, &w1, &bias],
            &[&flat],
            vec![
                ints_attribute("kernel_shape", &[k as i64]),
                ints_attribute("pads", &[half, half]),
            ],
        );
        let unsqueeze = node(
            &format!("{name}/unsqueeze"),
            "Unsqueeze",
            &[&flat, &axes],
            &[&out],
            vec![],
        );
        let at = (self.graph.node.iter())
            .position(|n| n.name() == name)
            .ok_or_else(|| GraphError::Missing(name.clone()))?;
        self.graph.node.splice(at..=at, [conv1d, unsqueeze]);
        let g = &mut self.graph.initializer;
        g.push(float_tensor(&w1, &[o as i64, c as i64, k as i64], &kernel));
        g.push(int64_tensor(&axes, 3));
        Ok(())
    }

    /// Reorders each branch `Conv -> Relu -> BatchNormalization -> MaxPool` that starts
    /// at a convolution in `convs` to `Conv -> MaxPool -> Relu -> BatchNormalization`
    /// (MUSICNN.md section 8, rewrite 1): the per-channel ReLU and batch norm then run on
    /// the pooled tensor, not on every frequency bin. Exact because both are monotonic
    /// per channel: where a channel's batch-norm scale is negative (gamma < 0), the max
    /// of the branch is taken at the conv's minimum, so that channel's filter and bias
    /// are negated (exact in floating point) and a `Mul` by -1 after the pool turns the
    /// max of the negated output back into that minimum.
    ///
    /// The convolutions also get output channels padded with zero filters up to a
    /// multiple of `block`, and a `Slice` after the pool drops them: ONNX Runtime keeps
    /// a branch in its blocked (NCHWc) layout, where the pool is vectorised, only when
    /// the channel count is a multiple of its block (8 with AVX2, 16 with AVX-512); 204
    /// or 51 channels are not, and the pool then runs as scalar code behind a layout
    /// conversion. `block` 1 pads nothing.
    pub fn pool_first(&mut self, convs: &[String], block: usize) -> Result<(), GraphError> {
        let block = block.max(1);
        let mut branches = Vec::new();
        for name in convs {
            branches.push(self.branch(name, block)?);
        }
        let g = &mut self.graph;
        // The rewritten filters and biases move to the end, after the other initializers.
        let replaced = |t: &TensorProto| {
            (branches.iter()).any(|br| t.name() == br.weight.name() || t.name() == br.bias.name())
        };
        g.initializer.retain(|t| !replaced(t));
        for br in &branches {
            g.initializer.extend([br.weight.clone(), br.bias.clone()]);
            g.initializer.extend(br.constants.iter().cloned());
        }
        let old = std::mem::take(&mut g.node);
        for n in &old {
            if (branches.iter()).any(|br| n.name() == br.relu.name() || n.name() == br.bn.name()) {
                continue; // emitted after the pool
            }
            let Some(br) = branches.iter().find(|br| n.name() == br.pool) else {
                g.node.push(n.clone());
                continue;
            };
            let (relu, bn) = (&br.relu, &br.bn);
            let p = n.name();
            let mut cur = format!("{p}/pooled");
            g.node.push(renamed(n, vec![br.conv_out.clone()], &cur));
            if br.sliced {
                let next = format!("{p}/sliced");
                let [start, end, axis] = ["start", "end", "axis"].map(|s| format!("{p}/{s}"));
                let ins = [&cur, &start, &end, &axis].map(String::as_str);
                g.node
                    .push(node(&format!("{p}/slice"), "Slice", &ins, &[&next], vec![]));
                cur = next;
            }
            if br.signed {
                let (next, sign) = (format!("{p}/signed"), format!("{p}/sign"));
                g.node
                    .push(node(&sign, "Mul", &[&cur, &sign], &[&next], vec![]));
                cur = next;
            }
            g.node.push(renamed(relu, vec![cur], &relu.output[0]));
            let mut bn_in = bn.input.clone();
            bn_in[0] = relu.output[0].clone();
            g.node.push(renamed(bn, bn_in, &br.out));
        }
        Ok(())
    }

    /// The branch of `pool_first` that starts at convolution `name`, checked, with its
    /// filters signed and padded to `block`.
    fn branch(&self, name: &str, block: usize) -> Result<Branch, GraphError> {
        // Who reads each tensor (a node reading one tensor twice counts once).
        let readers = |tensor: &str| -> Vec<&NodeProto> {
            (self.graph.node.iter())
                .filter(|n| n.input.iter().any(|i| i == tensor))
                .collect()
        };
        // The one node reading `tensor`, which must be an `op`.
        let sole_reader = |tensor: &str, op: &str| -> Result<&NodeProto, GraphError> {
            match readers(tensor)[..] {
                [n] if n.op_type() == op && n.output.len() == 1 => Ok(n),
                _ => Err(GraphError::Missing(format!(
                    "{tensor} read only by a single {op}"
                ))),
            }
        };
        let conv = self.node(name)?;
        let [_, weight, bias] = &conv.input[..] else {
            return Err(GraphError::Missing(format!("{name} weights and bias")));
        };
        let [conv_out] = &conv.output[..] else {
            return Err(GraphError::Malformed("convolution without one output"));
        };
        if readers(weight).len() != 1 || readers(bias).len() != 1 {
            return Err(GraphError::Malformed("convolution weights shared"));
        }
        let relu = sole_reader(conv_out, "Relu")?;
        let bn = sole_reader(&relu.output[0], "BatchNormalization")?;
        let pool = sole_reader(&bn.output[0], "MaxPool")?;
        if bn.input.len() != 5 {
            return Err(GraphError::Malformed("batch norm without its 4 parameters"));
        }
        let (_, gamma) = self.floats(&bn.input[1])?;
        let (mut dims, mut w) = self.floats(weight)?;
        let (_, mut b) = self.floats(bias)?;
        let channels = b.len();
        if dims.first() != Some(&(channels as i64))
            || gamma.len() != channels
            || channels == 0
            || w.len() % channels != 0
        {
            return Err(GraphError::Malformed("branch channel counts disagree"));
        }
        let per = w.len() / channels;
        let sign: Vec<f32> = gamma
            .iter()
            .map(|g| if *g < 0.0 { -1.0 } else { 1.0 })
            .collect();
        for (c, s) in sign.iter().enumerate() {
            b[c] *= s;
            w[c * per..(c + 1) * per].iter_mut().for_each(|v| *v *= s);
        }
        let padded = channels.div_ceil(block) * block;
        w.resize(padded * per, 0.0);
        b.resize(padded, 0.0);
        dims[0] = padded as i64;
        let p = pool.name();
        let mut constants = Vec::new();
        if padded != channels {
            constants.push(int64_tensor(&format!("{p}/start"), 0));
            constants.push(int64_tensor(&format!("{p}/end"), channels as i64));
            constants.push(int64_tensor(&format!("{p}/axis"), 1));
        }
        let signed = sign.contains(&-1.0);
        if signed {
            let dims = [1, channels as i64, 1, 1];
            constants.push(float_tensor(&format!("{p}/sign"), &dims, &sign));
        }
        Ok(Branch {
            weight: float_tensor(weight, &dims, &w),
            bias: float_tensor(bias, &[padded as i64], &b),
            constants,
            conv_out: conv_out.clone(),
            relu: relu.clone(),
            bn: bn.clone(),
            pool: p.to_string(),
            out: pool.output[0].clone(),
            sliced: padded != channels,
            signed,
        })
    }

    /// Sets the time padding of each convolution in `convs` (`pads` = `[t_begin,
    /// f_begin, t_end, f_end]`) to `begin` and `end`: with `0, 0` the timbral front-end
    /// computes only frames whose whole 7-frame window it is given (interior chunks of a
    /// track need no halo thrown away), with `halo, 0` or `0, halo` only a patch's own
    /// first or last frames, padded as the patch pads them.
    pub fn with_time_pads(
        &mut self,
        convs: &[String],
        begin: i64,
        end: i64,
    ) -> Result<(), GraphError> {
        let mut found = 0;
        for n in (self.graph.node.iter_mut()).filter(|n| convs.iter().any(|c| c == n.name())) {
            let pads = (n.attribute.iter_mut())
                .find(|a| a.name() == "pads")
                .ok_or(GraphError::Malformed("convolution without explicit pads"))?;
            let [_, f_begin, _, f_end] = pads.ints[..] else {
                return Err(GraphError::Malformed("convolution pads are not 2-D"));
            };
            pads.ints = vec![begin, f_begin, end, f_end];
            found += 1;
        }
        if found != convs.len() {
            return Err(GraphError::Missing(convs.join(", ")));
        }
        Ok(())
    }

    /// Every node that multiplies and accumulates (Conv, MatMul, Gemm) with what one of
    /// its output elements costs, read from its weight's shape: the model's arithmetic,
    /// once a run gives the outputs' shapes (see [`Model::exposing`]).
    pub fn mac_sites(&self) -> Result<Vec<MacSite>, GraphError> {
        let mut sites = Vec::new();
        for n in &self.graph.node {
            let per_element = match n.op_type() {
                // [O, C/group, kernel...]: every output element sums C/group x kernel.
                "Conv" => self.dims(n, 1)?.iter().skip(1).product::<i64>(),
                // [K, N] (Gemm: [N, K] when transB).
                "MatMul" => self.dims(n, 1)?[0],
                "Gemm" => {
                    let d = self.dims(n, 1)?;
                    let trans_b = n
                        .attribute
                        .iter()
                        .any(|a| a.name() == "transB" && a.i() != 0);
                    d[usize::from(trans_b)]
                }
                _ => continue,
            };
            let output = n
                .output
                .first()
                .ok_or(GraphError::Malformed("a node without output"))?;
            sites.push(MacSite {
                node: n.name().to_string(),
                output: output.clone(),
                per_element: per_element as u64,
            });
        }
        Ok(sites)
    }

    /// The dims of node `n`'s `i`th input, an initializer of rank >= 2.
    fn dims(&self, n: &NodeProto, i: usize) -> Result<Vec<i64>, GraphError> {
        let name = n
            .input
            .get(i)
            .ok_or(GraphError::Malformed("a weight input is missing"))?;
        let t = self.initializer(name)?;
        match t.dims.len() {
            0 | 1 => Err(GraphError::Malformed("a weight of rank < 2")),
            _ => Ok(t.dims.clone()),
        }
    }

    /// The model with `names` as extra graph outputs, their shapes left to the runtime,
    /// so that one run reports the shape of each.
    pub fn exposing(&self, names: &[String]) -> Model {
        let mut m = self.clone();
        m.graph
            .output
            .extend(names.iter().map(|name| ValueInfoProto {
                name: Some(name.clone()),
                ..ValueInfoProto::default()
            }));
        m
    }

    /// A model with this one's opsets computing `C = A x B` for two `[n, n]` inputs named
    /// `A` and `B`: a yardstick for the runtime's own GEMM rate.
    pub fn gemm(&self, n: i64) -> Model {
        let port = |name: &str| Port {
            name: name.to_string(),
            dims: vec![Dim::Fixed(n), Dim::Fixed(n)],
        };
        let graph = GraphProto {
            node: vec![node("gemm", "MatMul", &["A", "B"], &["C"], vec![])],
            name: Some("gemm".into()),
            input: vec![value_info(&port("A")), value_info(&port("B"))],
            output: vec![value_info(&port("C"))],
            ..GraphProto::default()
        };
        Model {
            top: self.top.clone(),
            graph,
        }
    }
}

/// One `Conv -> Relu -> BatchNormalization -> MaxPool` branch, as
/// [`Model::pool_first`] rewrites it.
struct Branch {
    /// The conv's filters and bias, signed and padded.
    weight: TensorProto,
    bias: TensorProto,
    /// The slice bounds and signs the rewritten branch reads.
    constants: Vec<TensorProto>,
    conv_out: String,
    /// The branch's ReLU and batch norm, emitted after the pool.
    relu: NodeProto,
    bn: NodeProto,
    pool: String,
    /// The pool's output, which the rewritten branch's BN produces instead.
    out: String,
    /// Padded channels to slice off after the pool.
    sliced: bool,
    /// Channels whose filters were negated.
    signed: bool,
}

/// A float tensor's values (raw_data or float_data).
fn floats(t: &TensorProto) -> Result<Vec<f32>, GraphError> {
    if t.data_type.is_some_and(|d| d != DataType::Float as i32) {
        return Err(GraphError::Malformed("initializer is not float32"));
    }
    let mut values = t.float_data.clone();
    if let Some(raw) = &t.raw_data {
        let le = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        values.extend(raw.chunks_exact(4).map(le));
    }
    Ok(values)
}

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        name: Some(name.to_string()),
        raw_data: Some(values.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..TensorProto::default()
    }
}

/// A one-element int64 tensor.
fn int64_tensor(name: &str, value: i64) -> TensorProto {
    TensorProto {
        dims: vec![1],
        data_type: Some(DataType::Int64 as i32),
        name: Some(name.to_string()),
        raw_data: Some(value.to_le_bytes().to_vec()),
        ..TensorProto::default()
    }
}

fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        ints: values.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..AttributeProto::default()
    }
}

fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(name.to_string()),
        op_type: Some(op.to_string()),
        attribute,
        ..NodeProto::default()
    }
}

/// `n` reading `input` and writing `output`, its op and attributes kept.
fn renamed(n: &NodeProto, input: Vec<String>, output: &str) -> NodeProto {
    NodeProto {
        input,
        output: vec![output.to_string()],
        ..n.clone()
    }
}

/// `n` as an `Identity` of its first input (same name and outputs).
fn identity(n: &NodeProto) -> NodeProto {
    NodeProto {
        input: n.input.iter().take(1).cloned().collect(),
        op_type: Some("Identity".into()),
        attribute: vec![],
        ..n.clone()
    }
}

/// A graph input or output of float tensors shaped as `p` says.
fn value_info(p: &Port) -> ValueInfoProto {
    let dim = (p.dims.iter())
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Free(name) => dimension::Value::DimParam(name.to_string()),
            }),
            denotation: None,
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: Some(DataType::Float as i32),
        shape: Some(TensorShapeProto { dim }),
    };
    ValueInfoProto {
        name: Some(p.name.clone()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            denotation: None,
        }),
        ..ValueInfoProto::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_of(graph: GraphProto) -> Model {
        let top = ModelProto {
            ir_version: Some(8),
            opset_import: vec![onnx::OperatorSetIdProto {
                domain: None,
                version: Some(17),
            }],
            ..ModelProto::default()
        };
        Model { top, graph }
    }

    fn conv(name: &str, inputs: &[&str], kernel: [i64; 2], pads: [i64; 4]) -> NodeProto {
        node(
            name,
            "Conv",
            inputs,
            &[&format!("{name}:0")],
            vec![
                ints_attribute("kernel_shape", &kernel),
                ints_attribute("pads", &pads),
            ],
        )
    }

    #[test]
    fn the_published_model_parses_and_encodes_to_its_own_bytes() {
        let path = crate::model::resolve(None).expect("the model (../shared/models)");
        let bytes = std::fs::read(&path).unwrap();
        let model = Model::parse(&bytes).unwrap();
        assert_eq!(model.graph.node.len(), 67);
        assert!(model.to_bytes() == bytes, "re-encoding changed the model");
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let bytes = model_of(GraphProto {
            node: vec![conv("a", &["x", "w"], [7, 38], [3, 1, 3, 2])],
            name: Some("a long enough name".into()),
            ..GraphProto::default()
        })
        .to_bytes();
        for cut in 0..bytes.len() {
            let _ = Model::parse(&bytes[..cut]);
        }
        assert!(Model::parse(&bytes[..bytes.len() - 1]).is_err());
        assert!(Model::parse(&[0xff]).is_err());
    }

    #[test]
    fn float_initializers_round_trip() {
        let values = [1.5f32, -2.0, 0.25, 3.0, -0.5, 8.0];
        let t = float_tensor("w", &[2, 3], &values);
        let t = TensorProto::decode(&t.encode_to_vec()[..]).unwrap();
        assert_eq!(t.dims, vec![2, 3]);
        assert_eq!(floats(&t).unwrap(), values);
        assert!(
            floats(&int64_tensor("axes", 3)).is_err(),
            "int64 is not read as float"
        );
    }

    #[test]
    fn time_pads_are_rewritten_only_on_the_named_convolutions() {
        let model = model_of(GraphProto {
            node: vec![
                conv("a", &["x", "w"], [7, 38], [3, 1, 3, 2]),
                conv("b", &["x", "w"], [7, 38], [3, 1, 3, 2]),
            ],
            ..GraphProto::default()
        });
        let pads_of = |m: &Model| -> Vec<(String, Vec<i64>)> {
            let m = Model::parse(&m.to_bytes()).unwrap();
            (m.graph.node.iter())
                .flat_map(|n| {
                    (n.attribute.iter())
                        .filter(|a| a.name() == "pads")
                        .map(|a| (n.name().to_string(), a.ints.clone()))
                })
                .collect()
        };
        let mut head = model.clone();
        head.with_time_pads(&["a".into()], 3, 0).unwrap();
        assert_eq!(
            pads_of(&head),
            vec![
                ("a".into(), vec![3, 1, 0, 2]),
                ("b".into(), vec![3, 1, 3, 2])
            ]
        );
        let mut valid = model.clone();
        valid
            .with_time_pads(&["a".into(), "b".into()], 0, 0)
            .unwrap();
        assert_eq!(
            pads_of(&valid),
            vec![
                ("a".into(), vec![0, 1, 0, 2]),
                ("b".into(), vec![0, 1, 0, 2])
            ]
        );
        assert!(matches!(
            model.clone().with_time_pads(&["c".into()], 0, 0),
            Err(GraphError::Missing(_))
        ));
    }

    /// A one-branch model like a MusiCNN branch: `x [1, 1, 6, 8]` -> Conv (5 filters,
    /// 3x4, time pads 1) -> Relu -> BatchNormalization -> MaxPool over all 5 frequency
    /// positions -> `p:0 [1, 5, 6, 1]`. Two of the five batch-norm scales are negative,
    /// and their biases keep the conv output positive, so their max is at the conv's
    /// minimum (not at a ReLU zero, where any order gives the same value).
    fn branch_model() -> Model {
        let w: Vec<f32> = (0..5 * 12)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let epsilon = AttributeProto {
            name: Some("epsilon".into()),
            f: Some(1e-3),
            r#type: Some(AttributeType::Float as i32),
            ..AttributeProto::default()
        };
        let pool = vec![
            ints_attribute("kernel_shape", &[1, 5]),
            ints_attribute("strides", &[1, 5]),
        ];
        let bn_in = ["r:0", "gamma", "beta", "mean", "var"];
        let port = |name: &str, dims: &[i64]| Port {
            name: name.into(),
            dims: dims.iter().map(|&d| Dim::Fixed(d)).collect(),
        };
        model_of(GraphProto {
            node: vec![
                conv("c", &["x", "w", "b"], [3, 4], [1, 0, 1, 0]),
                node("r", "Relu", &["c:0"], &["r:0"], vec![]),
                node("n", "BatchNormalization", &bn_in, &["n:0"], vec![epsilon]),
                node("p", "MaxPool", &["n:0"], &["p:0"], pool),
            ],
            name: Some("branch".into()),
            initializer: [
                ("w", vec![5, 1, 3, 4], w),
                ("b", vec![5], vec![0.1, 5.0, 0.3, 3.0, -0.1]),
                ("gamma", vec![5], vec![1.0, -2.0, 0.5, -0.3, 1.5]),
                ("beta", vec![5], vec![0.2, 0.1, -0.4, 0.3, 0.0]),
                ("mean", vec![5], vec![0.5, 0.2, 0.1, 0.0, 1.0]),
                ("var", vec![5], vec![1.0, 2.0, 0.5, 1.5, 0.8]),
            ]
            .iter()
            .map(|(name, dims, v)| float_tensor(name, dims, v))
            .collect(),
            input: vec![value_info(&port("x", &[1, 1, 6, 8]))],
            output: vec![value_info(&port("p:0", &[1, 5, 6, 1]))],
            ..GraphProto::default()
        })
    }

    fn ops(model: &Model) -> Vec<String> {
        let m = Model::parse(&model.to_bytes()).unwrap();
        m.graph
            .node
            .iter()
            .map(|n| n.op_type().to_string())
            .collect()
    }

    fn pooled(model: &Model, block: usize) -> Result<Model, GraphError> {
        let mut m = model.clone();
        m.pool_first(&["c".into()], block)?;
        Ok(m)
    }

    #[test]
    fn pool_first_reorders_the_branch_and_pads_to_the_block() {
        let model = branch_model();
        let out = pooled(&model, 4).unwrap();
        assert_eq!(
            ops(&out),
            [
                "Conv",
                "MaxPool",
                "Slice",
                "Mul",
                "Relu",
                "BatchNormalization"
            ]
        );
        let tensor = |name: &str| {
            let found = (out.graph.initializer.iter())
                .filter(|t| t.name() == name)
                .count();
            assert_eq!(found, 1, "one initializer {name}");
            out.floats(name).unwrap()
        };
        let (dims, w) = tensor("w");
        assert_eq!(dims, vec![8, 1, 3, 4], "5 filters padded to 8");
        let (_, w0) = model.floats("w").unwrap();
        assert_eq!(w[..12], w0[..12], "positive scale: filter kept");
        assert!(w[12..24].iter().zip(&w0[12..24]).all(|(a, b)| *a == -b));
        assert!(
            w[60..].iter().all(|v| *v == 0.0),
            "padding filters are zero"
        );
        assert_eq!(
            tensor("b").1,
            vec![0.1, -5.0, 0.3, -3.0, -0.1, 0.0, 0.0, 0.0]
        );
        assert_eq!(tensor("p/sign").1, vec![1.0, -1.0, 1.0, -1.0, 1.0]);

        // Block 1: nothing to slice.
        assert_eq!(
            ops(&pooled(&model, 1).unwrap()),
            ["Conv", "MaxPool", "Mul", "Relu", "BatchNormalization"]
        );
        assert!(matches!(
            model.clone().pool_first(&["nope".into()], 8),
            Err(GraphError::Missing(_))
        ));
        // A branch whose conv output is read twice is not rewritten.
        let mut shared = model.clone();
        let extra = node("x2", "Relu", &["c:0"], &["x2:0"], vec![]);
        shared.graph.node.push(extra);
        assert!(matches!(pooled(&shared, 8), Err(GraphError::Missing(_))));
    }

    #[test]
    fn pool_first_computes_the_same_values() {
        let env = crate::runtime::environment().expect("ONNX Runtime (run scripts/setup.sh)");
        let run = |bytes: &[u8], x: &[f32]| -> Vec<f32> {
            let mut s = ort::session::Session::builder(env)
                .unwrap()
                .commit_from_memory(bytes)
                .unwrap();
            let input = ort::value::TensorRef::from_array_view((vec![1usize, 1, 6, 8], x)).unwrap();
            let out = s.run(ort::inputs!["x" => input]).unwrap();
            out["p:0"].try_extract_tensor::<f32>().unwrap().1.to_vec()
        };
        let model = branch_model();
        for block in [1, 4, 8, 16] {
            let rewritten = pooled(&model, block).unwrap().to_bytes();
            for seed in 0..4u32 {
                let x: Vec<f32> = (0..48u32)
                    .map(|i| ((i * 2654435761u32.wrapping_add(seed)) % 1000) as f32 / 250.0 - 2.0)
                    .collect();
                let (a, b) = (run(&model.to_bytes(), &x), run(&rewritten, &x));
                assert_eq!(a.len(), 30);
                let diff = a
                    .iter()
                    .zip(&b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max);
                assert!(diff <= 1e-5, "block {block} seed {seed}: {a:?} vs {b:?}");
            }
        }
    }
}
