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
    /// The front-end's time axis must be a multiple of this many output frames (its
    /// Winograd tile; 1: any).
    pub front_tile: usize,
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
    let front_with = |begin, end| -> Result<Model, GraphError> {
        let mut padded = pooled.clone();
        padded.with_time_pads(&c.timbral_convs, begin, end)?;
        padded.extract(&front_cut)
    };
    let halo = c.halo as i64;
    let mut front = front_with(0, 0)?;
    let front_tile = c.winograd_tile.max(1);
    if front_tile > 1 {
        front.winograd_time(&c.timbral_convs, front_tile, BANDS)?;
    }
    let (front, head, tail) = (
        front.to_bytes(),
        front_with(halo, 0)?.to_bytes(),
        front_with(0, halo)?.to_bytes(),
    );
    pooled.pack_spare_filters(&c.pack_spare, block)?;
    if let Some(rw) = &c.conv_1d {
        pooled.conv_as_1d(rw)?;
    }
    let rest = pooled.extract(&rest_cut)?.to_bytes();
    Ok(SharedModels {
        front,
        front_tile,
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
        let sole_reader = |tensor: &str, op: &str| -> Result<&NodeProto, GraphError> {
            (self.sole_reader(tensor, op))
                .ok_or_else(|| GraphError::Missing(format!("{tensor} read only by a single {op}")))
        };
        let conv = self.node(name)?;
        let [_, weight, bias] = &conv.input[..] else {
            return Err(GraphError::Missing(format!("{name} weights and bias")));
        };
        let [conv_out] = &conv.output[..] else {
            return Err(GraphError::Malformed("convolution without one output"));
        };
        if self.readers(weight).len() != 1 || self.readers(bias).len() != 1 {
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

    /// Fills the zero filters [`Model::pool_first`] padded onto one-channel convolutions
    /// over time (`convs`, all reading one input) with the filters of other such branches
    /// that do not fill a channel block. musicnn's temporal branch has 51 filters of 128,
    /// 64 and 32 frames, padded to 64 each with AVX-512's block of 16: 13 of every 64
    /// filters multiply zeros. Here the 3 filters past 48 of the 64- and 32-frame branches
    /// move into the 128-frame convolution's padding, and those two branches keep 48.
    ///
    /// Exact: a moved filter gets zero taps where the longer kernel reaches further, and
    /// its own taps are summed in the same order by the same kernel; a zero tap adds an
    /// exact zero. After the pool, a `Slice` of the host's output and a `Concat` put the
    /// moved channels back after their branch's own. Of all the ways to move them (only
    /// to a longer kernel), the one with the fewest MACs per position is taken; none when
    /// nothing is gained, or when a branch was not padded (a block that divides it).
    pub fn pack_spare_filters(&mut self, convs: &[String], block: usize) -> Result<(), GraphError> {
        let block = block.max(1);
        let mut members = Vec::new();
        for name in convs {
            match self.time_conv(name)? {
                Some(m) => members.push(m),
                None => return Ok(()),
            }
        }
        if members.iter().any(|m| m.input != members[0].input) {
            return Err(GraphError::Malformed(
                "packed convolutions read different inputs",
            ));
        }
        let plan = pack_plan(&members, block);
        if plan.iter().all(Option::is_none) {
            return Ok(());
        }
        // Each member's rows: its own filters (all, or those that fill whole blocks),
        // then its guests', each at the tap offset that keeps its window.
        let mut spare_at = vec![0; members.len()];
        for (i, host) in members.iter().enumerate() {
            let own = host.own(plan[i].is_some(), block);
            let mut w = host.weights[..own * host.kernel].to_vec();
            let mut b = host.bias[..own].to_vec();
            for (g, guest) in members
                .iter()
                .enumerate()
                .filter(|(g, _)| plan[*g] == Some(i))
            {
                spare_at[g] = b.len();
                let offset = (host.pads.0 - guest.pads.0) as usize;
                for row in guest.kept(block)..guest.used {
                    let mut taps = vec![0.0; host.kernel];
                    taps[offset..offset + guest.kernel].copy_from_slice(
                        &guest.weights[row * guest.kernel..(row + 1) * guest.kernel],
                    );
                    w.extend(taps);
                    b.push(guest.bias[row]);
                }
            }
            let rows = b.len().div_ceil(block) * block;
            w.resize(rows * host.kernel, 0.0);
            b.resize(rows, 0.0);
            let dims = [rows as i64, 1, host.kernel as i64, 1];
            self.replace_initializer(float_tensor(&host.weight, &dims, &w));
            self.replace_initializer(float_tensor(&host.bias_name, &[rows as i64], &b));
        }
        // A moved branch: its own channels, then its spare ones from the host's pool.
        for (g, guest) in members.iter().enumerate() {
            let Some(h) = plan[g] else { continue };
            let p = &guest.pool;
            let (kept, spare) = (format!("{p}/kept"), format!("{p}/spare"));
            let (start, end) = (format!("{p}/spare_start"), format!("{p}/spare_end"));
            self.replace_initializer(int64_tensor(&guest.slice_end, guest.kept(block) as i64));
            self.replace_initializer(int64_tensor(&start, spare_at[g] as i64));
            self.replace_initializer(int64_tensor(
                &end,
                (spare_at[g] + guest.spare(block)) as i64,
            ));
            let g_nodes = &mut self.graph.node;
            let slice = (g_nodes.iter_mut())
                .find(|n| n.name() == guest.slice)
                .ok_or_else(|| GraphError::Missing(guest.slice.clone()))?;
            slice.output = vec![kept.clone()];
            let ins = [&members[h].pooled, &start, &end, &guest.slice_axis].map(String::as_str);
            g_nodes.push(node(&spare, "Slice", &ins, &[&spare], vec![]));
            g_nodes.push(node(
                &format!("{p}/joined"),
                "Concat",
                &[&kept, &spare],
                &[&guest.sliced],
                vec![int_attribute("axis", 1)],
            ));
        }
        sort_topologically(&mut self.graph)
    }

    /// `name` as a member of [`Model::pack_spare_filters`]: a one-channel convolution over
    /// time with 'same' padding whose pool is followed by `pool_first`'s slice; `None`
    /// when the pool has no slice (its channels fill whole blocks: nothing to fill).
    fn time_conv(&self, name: &str) -> Result<Option<TimeConv>, GraphError> {
        let not_time = || GraphError::Malformed("packed convolution is not one-channel over time");
        let conv = self.node(name)?;
        let [input, weight, bias] = &conv.input[..] else {
            return Err(GraphError::Missing(format!("{name} weights and bias")));
        };
        let (dims, weights) = self.floats(weight)?;
        let (_, bias_values) = self.floats(bias)?;
        let &[rows, 1, kernel, 1] = &dims[..] else {
            return Err(not_time());
        };
        let pads = (conv.attribute.iter())
            .find(|a| a.name() == "pads")
            .map(|a| a.ints.clone())
            .unwrap_or_default();
        let &[before, 0, after, 0] = &pads[..] else {
            return Err(not_time());
        };
        if before + after != kernel - 1 || bias_values.len() != rows as usize {
            return Err(not_time());
        }
        let pool = (self.sole_reader(&conv.output[0], "MaxPool"))
            .ok_or_else(|| GraphError::Missing(format!("{name} read only by its pool")))?;
        let Some(slice) = self.sole_reader(&pool.output[0], "Slice") else {
            return Ok(None);
        };
        let [_, start, end, axis] = &slice.input[..] else {
            return Err(GraphError::Malformed(
                "pool_first's slice without its bounds",
            ));
        };
        let value = |t: &str| self.initializer(t).ok().and_then(int64_value);
        let used = match (value(start), value(end), value(axis)) {
            (Some(0), Some(end), Some(1)) if end > 0 && end <= rows => end as usize,
            _ => {
                return Err(GraphError::Malformed(
                    "pool_first's slice is not [0, used) of channels",
                ))
            }
        };
        Ok(Some(TimeConv {
            input: input.clone(),
            weight: weight.clone(),
            bias_name: bias.clone(),
            weights,
            bias: bias_values,
            kernel: kernel as usize,
            pads: (before, after),
            used,
            pool: pool.name().to_string(),
            pooled: pool.output[0].clone(),
            slice: slice.name().to_string(),
            slice_end: end.clone(),
            slice_axis: axis.clone(),
            sliced: slice.output[0].clone(),
        }))
    }

    /// Who reads `tensor` (a node reading it twice counts once).
    fn readers(&self, tensor: &str) -> Vec<&NodeProto> {
        (self.graph.node.iter())
            .filter(|n| n.input.iter().any(|i| i == tensor))
            .collect()
    }

    /// The one node reading `tensor`, if it is an `op` with one output.
    fn sole_reader(&self, tensor: &str, op: &str) -> Option<&NodeProto> {
        match self.readers(tensor)[..] {
            [n] if n.op_type() == op && n.output.len() == 1 => Some(n),
            _ => None,
        }
    }

    fn replace_initializer(&mut self, t: TensorProto) {
        let inits = &mut self.graph.initializer;
        match inits.iter_mut().find(|old| old.name() == t.name()) {
            Some(old) => *old = t,
            None => inits.push(t),
        }
    }

    /// Runs each convolution in `convs` (one input channel, `[7, kf]` taps over `[time,
    /// width]`, no padding) and the `MaxPool` over the whole width that reads it as
    /// Winograd's `F(tile, 7)` along time ([`crate::winograd`]): an `n x 1` convolution
    /// of stride `tile` turns each tile's `n = tile + 6` frames into `n` points, one
    /// grouped `1 x kf` convolution per point multiplies them with the filters' own
    /// points, a `MatMul` by `AT` gives the `tile` frames back, then the same max, the
    /// bias (a max commutes with adding it) and frames back in order. The time axis must
    /// be a whole number of tiles (the caller pads it). Not exact: see `winograd`.
    pub fn winograd_time(
        &mut self,
        convs: &[String],
        tile: usize,
        width: usize,
    ) -> Result<(), GraphError> {
        for name in convs {
            let conv = self.node(name)?.clone();
            let [input, weight, bias] = &conv.input[..] else {
                return Err(GraphError::Missing(format!("{name} weights and bias")));
            };
            let ints = |n: &NodeProto, a: &str| {
                (n.attribute.iter().find(|x| x.name() == a)).map(|x| x.ints.clone())
            };
            if self.readers(weight).len() != 1 || self.readers(bias).len() != 1 {
                return Err(GraphError::Malformed("convolution weights shared"));
            }
            let (dims, w) = self.floats(weight)?;
            let (_, b) = self.floats(bias)?;
            let [filters, 1, taps, kf] = dims[..] else {
                return Err(GraphError::Malformed(
                    "Winograd: not a one-channel 2-D convolution",
                ));
            };
            let (filters, taps, kf) = (filters as usize, taps as usize, kf as usize);
            let unit = |v: Option<Vec<i64>>| v.is_none_or(|v| v.iter().all(|&x| x == 1));
            if ints(&conv, "pads").is_some_and(|p| p.iter().any(|&x| x != 0))
                || !unit(ints(&conv, "strides"))
                || !unit(ints(&conv, "dilations"))
                || (conv.attribute.iter()).any(|a| a.name() == "group" && a.i() != 1)
                || b.len() != filters
                || kf > width
            {
                return Err(GraphError::Malformed(
                    "Winograd: a convolution with padding, strides or groups",
                ));
            }
            let positions = width - kf + 1;
            let pool = (self.sole_reader(&conv.output[0], "MaxPool"))
                .ok_or_else(|| GraphError::Missing(format!("{name} read only by a MaxPool")))?
                .clone();
            if ints(&pool, "kernel_shape") != Some(vec![1, positions as i64])
                || ints(&pool, "pads").is_some_and(|p| p.iter().any(|&x| x != 0))
            {
                return Err(GraphError::Malformed(
                    "Winograd: the max is not over the whole width",
                ));
            }
            let t = crate::winograd::Transform::new(tile, taps)
                .ok_or(GraphError::Malformed("Winograd: no transform of that size"))?;
            let n = t.points();
            // The filters' points: V[j, f, b] = sum_k G[j, k] W[f, k, b], in f64.
            let mut v = vec![0f32; n * filters * kf];
            for j in 0..n {
                for f in 0..filters {
                    for c in 0..kf {
                        let s: f64 = (0..taps)
                            .map(|k| t.g[j * taps + k] * f64::from(w[(f * taps + k) * kf + c]))
                            .sum();
                        v[(j * filters + f) * kf + c] = s as f32;
                    }
                }
            }
            let f32s = |m: &[f64]| m.iter().map(|&x| x as f32).collect::<Vec<_>>();
            let k = |s: &str| format!("{name}/winograd/{s}");
            let (nt, ft, tl) = (n as i64, filters as i64, tile as i64);
            // Each Reshape's target shape is the initializer named after it.
            let shapes = [
                ("points", vec![0, nt, -1]),
                ("pooling", vec![0, tl * ft, -1, positions as i64]),
                ("tiles", vec![0, tl, ft, -1]),
                ("frames", vec![0, ft, -1, 1]),
            ];
            let shape = |s: &str| k(&format!("{s}_shape"));
            let g = &mut self.graph;
            g.initializer
                .retain(|x| x.name() != weight && x.name() != bias);
            g.initializer.extend([
                float_tensor(&k("bt"), &[nt, 1, nt, 1], &f32s(&t.bt)),
                float_tensor(&k("filters"), &[nt * ft, 1, 1, kf as i64], &v),
                float_tensor(&k("at"), &[tl, nt], &f32s(&t.at)),
                float_tensor(&k("bias"), &[1, ft, 1, 1], &b),
            ]);
            (g.initializer).extend(shapes.iter().map(|(s, d)| int64s_tensor(&shape(s), d)));
            let reshape = |s: &str, from: &str, to: &str| {
                node(&k(s), "Reshape", &[&k(from), &shape(s)], &[&k(to)], vec![])
            };
            let chain = [
                node(
                    &k("in"),
                    "Conv",
                    &[input, &k("bt")],
                    &[&k("u")],
                    vec![
                        ints_attribute("kernel_shape", &[nt, 1]),
                        ints_attribute("strides", &[tl, 1]),
                    ],
                ),
                node(
                    &k("mul"),
                    "Conv",
                    &[&k("u"), &k("filters")],
                    &[&k("m")],
                    vec![
                        ints_attribute("kernel_shape", &[1, kf as i64]),
                        int_attribute("group", nt),
                    ],
                ),
                reshape("points", "m", "m3"),
                node(
                    &k("out"),
                    "MatMul",
                    &[&k("at"), &k("m3")],
                    &[&k("y3")],
                    vec![],
                ),
                reshape("pooling", "y3", "y4"),
                renamed(&pool, vec![k("y4")], &k("pooled")),
                reshape("tiles", "pooled", "y5"),
                node(
                    &k("order"),
                    "Transpose",
                    &[&k("y5")],
                    &[&k("y6")],
                    vec![ints_attribute("perm", &[0, 2, 3, 1])],
                ),
                reshape("frames", "y6", "y7"),
                node(
                    &k("bias_add"),
                    "Add",
                    &[&k("y7"), &k("bias")],
                    &[&pool.output[0]],
                    vec![],
                ),
            ];
            g.node
                .retain(|x| x.name() != conv.name() && x.name() != pool.name());
            g.node.extend(chain);
            sort_topologically(g)?;
        }
        Ok(())
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
                // [K, N] (Gemm: [N, K] when transB); a weight on the left, [M, K], times
                // the data (a Winograd output transform): K.
                "MatMul" => match self.dims(n, 1) {
                    Ok(d) => d[0],
                    Err(_) => self.dims(n, 0)?[1],
                },
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

/// One branch of [`Model::pack_spare_filters`], as `pool_first` left it.
struct TimeConv {
    input: String,
    weight: String,
    bias_name: String,
    /// `[rows, 1, kernel, 1]` filters (signed and padded) and their bias.
    weights: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    /// Time padding before and after.
    pads: (i64, i64),
    /// Filters that are the model's (the rest are padding).
    used: usize,
    pool: String,
    pooled: String,
    slice: String,
    slice_end: String,
    slice_axis: String,
    sliced: String,
}

impl TimeConv {
    /// The filters that fill whole blocks: those a branch keeps when its others move.
    fn kept(&self, block: usize) -> usize {
        self.used - self.used % block
    }

    /// The filters past the last whole block: those that move.
    fn spare(&self, block: usize) -> usize {
        self.used % block
    }

    /// Its own filters its convolution keeps: all, or only whole blocks if it moves.
    fn own(&self, moves: bool, block: usize) -> usize {
        if moves {
            self.kept(block)
        } else {
            self.used
        }
    }

    /// Whether a filter of `guest` fits this kernel's window (same output times).
    fn covers(&self, guest: &TimeConv) -> bool {
        self.kernel > guest.kernel && self.pads.0 >= guest.pads.0 && self.pads.1 >= guest.pads.1
    }
}

/// For each member, the member its spare filters move to (`None`: they stay, padded):
/// the assignment with the fewest MACs per output position, moves only when they gain.
fn pack_plan(members: &[TimeConv], block: usize) -> Vec<Option<usize>> {
    let cost = |plan: &[Option<usize>]| -> usize {
        (0..members.len())
            .map(|i| {
                let m = &members[i];
                let guests: usize = (0..members.len())
                    .filter(|g| plan[*g] == Some(i))
                    .map(|g| members[g].spare(block))
                    .sum();
                let rows = m.own(plan[i].is_some(), block) + guests;
                rows.div_ceil(block) * block * m.kernel
            })
            .sum()
    };
    let mut best = vec![None; members.len()];
    let mut best_cost = cost(&best);
    let mut plan = best.clone();
    // Every assignment: member g's spare stays or goes to a member that covers it.
    fn each(
        g: usize,
        members: &[TimeConv],
        block: usize,
        plan: &mut Vec<Option<usize>>,
        visit: &mut dyn FnMut(&[Option<usize>]),
    ) {
        if g == members.len() {
            return visit(plan);
        }
        plan[g] = None;
        each(g + 1, members, block, plan, visit);
        let m = &members[g];
        if m.kept(block) == 0 || m.spare(block) == 0 {
            return;
        }
        for h in (0..members.len()).filter(|h| members[*h].covers(m)) {
            plan[g] = Some(h);
            each(g + 1, members, block, plan, visit);
        }
        plan[g] = None;
    }
    each(0, members, block, &mut plan, &mut |p| {
        let c = cost(p);
        if c < best_cost {
            (best, best_cost) = (p.to_vec(), c);
        }
    });
    best
}

/// A one-element int64 tensor's value.
fn int64_value(t: &TensorProto) -> Option<i64> {
    if t.data_type != Some(DataType::Int64 as i32) {
        return None;
    }
    match (&t.raw_data, &t.int64_data[..]) {
        (Some(raw), _) if raw.len() == 8 => Some(i64::from_le_bytes(raw[..].try_into().ok()?)),
        (None, [v]) => Some(*v),
        _ => None,
    }
}

/// Orders the nodes so each comes after those it reads from (as ONNX requires), keeping
/// the given order wherever it already is one.
fn sort_topologically(g: &mut GraphProto) -> Result<(), GraphError> {
    let mut known: HashSet<String> = (g.input.iter().map(|v| v.name().to_string()))
        .chain(g.initializer.iter().map(|t| t.name().to_string()))
        .chain([String::new()])
        .collect();
    let mut left = std::mem::take(&mut g.node);
    while !left.is_empty() {
        let ready = (left.iter())
            .position(|n| n.input.iter().all(|i| known.contains(i)))
            .ok_or(GraphError::Malformed(
                "graph with a cycle or an input nothing makes",
            ))?;
        let n = left.remove(ready);
        known.extend(n.output.iter().cloned());
        g.node.push(n);
    }
    Ok(())
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
    int64s_tensor(name, &[value])
}

/// A 1-D int64 tensor.
fn int64s_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        name: Some(name.to_string()),
        raw_data: Some(values.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..TensorProto::default()
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        i: Some(value),
        r#type: Some(AttributeType::Int as i32),
        ..AttributeProto::default()
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

    /// Three one-channel time convolutions of 8, 4 and 2 frames ('same' padding), 5
    /// filters each, over one `[1, 1, 10, 6]` input, each `Relu -> BatchNormalization ->
    /// MaxPool` over the 6 bands: musicnn's temporal branch in miniature.
    fn temporal_model() -> Model {
        let mut node_list = Vec::new();
        let mut initializer = Vec::new();
        let mut output = Vec::new();
        for (k, before) in [(8i64, 3i64), (4, 1), (2, 0)] {
            let c = format!("t{k}");
            let name = |s: &str| format!("{c}/{s}");
            node_list.extend([
                conv(
                    &c,
                    &["x", &name("w"), &name("b")],
                    [k, 1],
                    [before, 0, k - 1 - before, 0],
                ),
                node(
                    &name("r"),
                    "Relu",
                    &[&format!("{c}:0")],
                    &[&name("r:0")],
                    vec![],
                ),
                node(
                    &name("n"),
                    "BatchNormalization",
                    &[
                        &name("r:0"),
                        &name("gamma"),
                        &name("beta"),
                        &name("mean"),
                        &name("var"),
                    ],
                    &[&name("n:0")],
                    vec![],
                ),
                node(
                    &name("p"),
                    "MaxPool",
                    &[&name("n:0")],
                    &[&name("p:0")],
                    vec![ints_attribute("kernel_shape", &[1, 6])],
                ),
            ]);
            let w: Vec<f32> = (0..5 * k as usize)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0 + k as f32 / 10.0)
                .collect();
            for (t, dims, v) in [
                ("w", vec![5, 1, k, 1], w),
                ("b", vec![5], vec![0.1, 0.5, 0.3, -0.3, -0.1]),
                ("gamma", vec![5], vec![1.0, -2.0, 0.5, -0.3, 1.5]),
                ("beta", vec![5], vec![0.2, 0.1, -0.4, 0.3, 0.0]),
                ("mean", vec![5], vec![0.5, 0.2, 0.1, 0.0, 1.0]),
                ("var", vec![5], vec![1.0, 2.0, 0.5, 1.5, 0.8]),
            ] {
                initializer.push(float_tensor(&name(t), &dims, &v));
            }
            output.push(Port {
                name: name("p:0"),
                dims: [1, 5, 10, 1].map(Dim::Fixed).to_vec(),
            });
        }
        let input = Port {
            name: "x".into(),
            dims: [1, 1, 10, 6].map(Dim::Fixed).to_vec(),
        };
        model_of(GraphProto {
            node: node_list,
            name: Some("temporal".into()),
            initializer,
            input: vec![value_info(&input)],
            output: output.iter().map(value_info).collect(),
            ..GraphProto::default()
        })
    }

    const TEMPORAL: [&str; 3] = ["t8", "t4", "t2"];

    fn packed(model: &Model, block: usize) -> Model {
        let convs = TEMPORAL.map(String::from);
        let mut m = model.clone();
        m.pool_first(&convs, block).unwrap();
        m.pack_spare_filters(&convs, block).unwrap();
        m
    }

    #[test]
    fn spare_filters_fill_the_longest_kernels_padding() {
        let model = temporal_model();
        let out = packed(&model, 4);
        let rows = |t: &str| out.floats(&format!("{t}/w")).unwrap();
        // 5 filters each, block 4: padded to 8, 8, 8 (112 MACs per position); the 5th
        // filters of t4 and t2 move into t8's padding (8, 4, 4: 88 MACs per position).
        let (d8, w8) = rows("t8");
        assert_eq!(d8, vec![8, 1, 8, 1]);
        assert_eq!(rows("t4").0, vec![4, 1, 4, 1]);
        assert_eq!(rows("t2").0, vec![4, 1, 2, 1]);
        let (_, w4) = pooled_rows(&model, "t4");
        let (_, w2) = pooled_rows(&model, "t2");
        // Row 5 is t4's 5th filter, at taps 2..6 (t8 pads 3 before, t4 1); row 6 is t2's,
        // at taps 3..5; row 7 is padding.
        assert_eq!(
            w8[40..48],
            [0.0, 0.0, w4[16], w4[17], w4[18], w4[19], 0.0, 0.0]
        );
        assert_eq!(w8[48..56], [0.0, 0.0, 0.0, w2[8], w2[9], 0.0, 0.0, 0.0]);
        assert!(w8[56..].iter().all(|v| *v == 0.0));
        let int = |t: &str| out.initializer(t).ok().and_then(int64_value);
        assert_eq!(int("t4/p/end"), Some(4));
        assert_eq!(
            (int("t4/p/spare_start"), int("t4/p/spare_end")),
            (Some(5), Some(6))
        );
        assert_eq!(
            (int("t2/p/spare_start"), int("t2/p/spare_end")),
            (Some(6), Some(7))
        );
        // Every node comes after the nodes it reads from.
        let mut known: HashSet<&str> = ["x", ""].into();
        known.extend(out.graph.initializer.iter().map(|t| t.name()));
        for n in &out.graph.node {
            assert!(
                n.input.iter().all(|i| known.contains(i.as_str())),
                "{} too early",
                n.name()
            );
            known.extend(n.output.iter().map(String::as_str));
        }
        // Nothing to gain with block 1 (no padding) or 5 (none needed): unchanged.
        for block in [1, 5] {
            let mut once = model.clone();
            once.pool_first(&TEMPORAL.map(String::from), block).unwrap();
            assert_eq!(
                packed(&model, block).to_bytes(),
                once.to_bytes(),
                "block {block}"
            );
        }
        // A convolution over more than one channel, or across bands, is refused.
        let mut timbral = branch_model();
        timbral.pool_first(&["c".into()], 4).unwrap();
        assert!(timbral.pack_spare_filters(&["c".into()], 4).is_err());
    }

    /// `t`'s filters as `pool_first` (block 1) leaves them: signed, not padded.
    fn pooled_rows(model: &Model, t: &str) -> (Vec<i64>, Vec<f32>) {
        let mut m = model.clone();
        m.pool_first(&TEMPORAL.map(String::from), 1).unwrap();
        m.floats(&format!("{t}/w")).unwrap()
    }

    /// The values `bytes` gives for `feeds` (name, shape, values) at `outputs`.
    fn run(
        bytes: &[u8],
        feeds: &[(&str, Vec<usize>, Vec<f32>)],
        outputs: &[&str],
    ) -> Vec<Vec<f32>> {
        let env = crate::runtime::environment().expect("ONNX Runtime (run scripts/setup.sh)");
        let mut s = ort::session::Session::builder(env)
            .unwrap()
            .commit_from_memory(bytes)
            .unwrap();
        let inputs: Vec<(String, ort::session::SessionInputValue)> = feeds
            .iter()
            .map(|(name, dims, v)| {
                let t = ort::value::Tensor::from_array((dims.clone(), v.clone())).unwrap();
                (name.to_string(), t.into())
            })
            .collect();
        let out = s.run(inputs).unwrap();
        outputs
            .iter()
            .map(|o| out[*o].try_extract_tensor::<f32>().unwrap().1.to_vec())
            .collect()
    }

    fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed)) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    #[test]
    fn packed_spare_filters_compute_the_same_values() {
        let model = temporal_model();
        let outs = ["t8/p:0", "t4/p:0", "t2/p:0"];
        for block in [1, 2, 4, 8, 16] {
            let mut once = model.clone();
            once.pool_first(&TEMPORAL.map(String::from), block).unwrap();
            for seed in 0..4 {
                let feeds = [("x", vec![1, 1, 10, 6], values(60, seed))];
                let a = run(&model.to_bytes(), &feeds, &outs);
                let b = run(&once.to_bytes(), &feeds, &outs);
                let c = run(&packed(&model, block).to_bytes(), &feeds, &outs);
                assert_eq!(c.iter().map(Vec::len).sum::<usize>(), 150);
                assert!(
                    max_diff(&a, &c) <= 1e-5,
                    "block {block} seed {seed}: {a:?} vs {c:?}"
                );
                assert!(
                    max_diff(&b, &c) <= 1e-6,
                    "block {block} seed {seed}: {b:?} vs {c:?}"
                );
            }
        }
    }

    /// The real model's rest, with and without its temporal filters packed, at both blocks
    /// ONNX Runtime uses: the same values (0.0 apart when measured on 2026-12-07).
    #[test]
    fn the_rest_gives_the_same_values_with_its_spare_filters_packed() {
        let path = crate::model::resolve(None).expect("the model (../shared/models)");
        let bytes = std::fs::read(&path).unwrap();
        let m = crate::model::manifest();
        let mut unpacked = m.clone();
        unpacked.shared.pack_spare.clear();
        let outs = [m.embedding_output.as_str(), m.tags_output.as_str()];
        let t = PATCH_FRAMES;
        for block in [8, 16] {
            let a = shared_engine(&bytes, &unpacked, block).unwrap().rest;
            let b = shared_engine(&bytes, m, block).unwrap().rest;
            assert!(b.len() < a.len(), "block {block}: nothing packed");
            for seed in 0..3 {
                let mut feeds = vec![(
                    m.shared.raw.as_str(),
                    vec![1, 1, t, BANDS],
                    values(t * BANDS, seed),
                )];
                for (i, name) in m.shared.timbral.iter().enumerate() {
                    let n = m.shared.channels * t;
                    feeds.push((
                        name.as_str(),
                        vec![1, m.shared.channels, t],
                        values(n, seed + 7 * i as u32),
                    ));
                }
                let d = max_diff(&run(&a, &feeds, &outs), &run(&b, &feeds, &outs));
                assert!(d <= 1e-6, "block {block} seed {seed}: max abs diff {d}");
            }
        }
    }

    /// `x [1, 1, time, 8]` -> a 7x4 convolution of 5 filters, no padding -> max over the
    /// 5 positions -> Relu.
    fn timbral_model(pads: [i64; 4], pool_width: i64) -> Model {
        let w: Vec<f32> = (0..5 * 28)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let pool = vec![
            ints_attribute("kernel_shape", &[1, pool_width]),
            ints_attribute("strides", &[1, pool_width]),
        ];
        let port = |name: &str, dims: Vec<Dim>| Port {
            name: name.into(),
            dims,
        };
        let time = Dim::Free("time");
        model_of(GraphProto {
            node: vec![
                conv("c", &["x", "w", "b"], [7, 4], pads),
                node("p", "MaxPool", &["c:0"], &["p:0"], pool),
                node("r", "Relu", &["p:0"], &["r:0"], vec![]),
            ],
            name: Some("timbral".into()),
            initializer: vec![
                float_tensor("w", &[5, 1, 7, 4], &w),
                float_tensor("b", &[5], &[0.1, 5.0, 0.3, 3.0, -0.1]),
            ],
            input: vec![value_info(&port(
                "x",
                vec![Dim::Fixed(1), Dim::Fixed(1), time.clone(), Dim::Fixed(8)],
            ))],
            output: vec![value_info(&port(
                "r:0",
                vec![Dim::Fixed(1), Dim::Fixed(5), time, Dim::Fixed(1)],
            ))],
            ..GraphProto::default()
        })
    }

    #[test]
    fn winograd_time_computes_the_same_values() {
        let direct = timbral_model([0, 0, 0, 0], 5);
        for tile in [2, 4] {
            let mut w = direct.clone();
            w.winograd_time(&["c".into()], tile, 8).unwrap();
            let ops = ops(&w);
            assert!(!ops.iter().any(|o| o == "c"), "{ops:?}");
            for tiles in [1, 3, 8] {
                let frames = tile * tiles;
                let x = values((frames + 6) * 8, tiles as u32);
                let feeds = [("x", vec![1, 1, frames + 6, 8], x)];
                let (a, b) = (
                    run(&direct.to_bytes(), &feeds, &["r:0"]),
                    run(&w.to_bytes(), &feeds, &["r:0"]),
                );
                assert_eq!(a[0].len(), 5 * frames);
                let scale = a[0].iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = max_diff(&a, &b);
                assert!(
                    d <= 1e-5 * scale,
                    "F({tile}, 7), {frames} frames: max abs diff {d} of {scale}"
                );
            }
        }
    }

    #[test]
    fn winograd_time_refuses_what_it_cannot_compute() {
        let padded = timbral_model([3, 0, 3, 0], 5);
        assert!(padded.clone().winograd_time(&["c".into()], 4, 8).is_err());
        let partial_max = timbral_model([0, 0, 0, 0], 1);
        assert!(partial_max
            .clone()
            .winograd_time(&["c".into()], 4, 8)
            .is_err());
        let direct = timbral_model([0, 0, 0, 0], 5);
        assert!(direct.clone().winograd_time(&["c".into()], 9, 8).is_err());
        assert!(direct
            .clone()
            .winograd_time(&["nothing".into()], 4, 8)
            .is_err());
        let mut shared = direct.clone();
        (shared.graph.node).push(conv("c2", &["x", "w", "b"], [7, 4], [0, 0, 0, 0]));
        assert!(matches!(
            shared.winograd_time(&["c".into()], 4, 8),
            Err(GraphError::Malformed("convolution weights shared"))
        ));
    }

    /// The real front-end with its timbral convolutions as F(4, 7) against the direct
    /// ones: within 2e-5 of the outputs' largest magnitude (measured: 2.5e-6).
    #[test]
    fn the_front_end_as_winograd_tiles_gives_the_same_values() {
        let path = crate::model::resolve(None).expect("the model (../shared/models)");
        let bytes = std::fs::read(&path).unwrap();
        let m = crate::model::manifest();
        assert_eq!(m.shared.winograd_tile, 4);
        let mut direct = m.clone();
        direct.shared.winograd_tile = 0;
        let outs: Vec<&str> = m.shared.timbral.iter().map(String::as_str).collect();
        for block in [8, 16] {
            let a = shared_engine(&bytes, &direct, block).unwrap();
            let b = shared_engine(&bytes, m, block).unwrap();
            assert_eq!((a.front_tile, b.front_tile), (1, 4));
            for (seed, frames) in [(0, 128), (1, 8)] {
                let t = frames + 2 * m.shared.halo;
                let x: Vec<f32> = values(t * BANDS, seed)
                    .iter()
                    .map(|v| 3.0 * v + 1.0)
                    .collect();
                let feeds = [(m.shared.raw.as_str(), vec![1, 1, t, BANDS], x)];
                let (p, q) = (run(&a.front, &feeds, &outs), run(&b.front, &feeds, &outs));
                let scale = p.iter().flatten().fold(0f32, |s, v| s.max(v.abs()));
                let d = max_diff(&p, &q);
                assert!(
                    d <= 2e-5 * scale,
                    "block {block}, {frames} frames: max abs diff {d} of {scale}"
                );
            }
        }
    }
}
