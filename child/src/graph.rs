//! Derives sub-models from the verified ONNX model, in memory, when it is loaded
//! (`graph::extract`): the shared engine needs the timbral front-end with a free time
//! axis and the per-patch remainder fed those features (`../shared/MUSICNN.md` §8).
//!
//! Made from the model's own bytes each time, nothing derived is ever written or shipped
//! (the model's licence applies to it), and the source is the file whose sha256 (or
//! probe) was checked. This is just enough protobuf to cut an ONNX graph: fields are
//! copied as bytes, only nodes, initializers, inputs and outputs are read.

use std::collections::{HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("the model is not a well-formed ONNX file: {0}")]
    Malformed(&'static str),
    #[error("the model has no tensor {0:?}: not the graph this engine was built for")]
    Missing(String),
}

/// One protobuf field: number, wire type, and its payload as it appears in the input.
#[derive(Debug, Clone, Copy)]
struct Field<'a> {
    number: u64,
    wire: u8,
    /// For length-delimited fields, the payload without its length; else the raw value.
    payload: &'a [u8],
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, GraphError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf
            .get(*pos)
            .ok_or(GraphError::Malformed("truncated varint"))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(GraphError::Malformed("varint too long"))
}

fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, GraphError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        let start = pos;
        let payload = match wire {
            0 => {
                varint(buf, &mut pos)?;
                &buf[start..pos]
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                pos += n;
                buf.get(start..pos)
                    .ok_or(GraphError::Malformed("truncated fixed field"))?
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?)
                    .map_err(|_| GraphError::Malformed("length overflow"))?;
                let s = pos;
                pos = s
                    .checked_add(len)
                    .ok_or(GraphError::Malformed("length overflow"))?;
                buf.get(s..pos)
                    .ok_or(GraphError::Malformed("truncated field"))?
            }
            _ => return Err(GraphError::Malformed("unsupported wire type")),
        };
        out.push(Field {
            number,
            wire,
            payload,
        });
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_field(out: &mut Vec<u8>, f: &Field) {
    put_varint(out, (f.number << 3) | u64::from(f.wire));
    if f.wire == 2 {
        put_varint(out, f.payload.len() as u64);
    }
    out.extend_from_slice(f.payload);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_field(
        out,
        &Field {
            number,
            wire: 2,
            payload: bytes,
        },
    );
}

fn put_uint(out: &mut Vec<u8>, number: u64, v: u64) {
    put_varint(out, number << 3);
    put_varint(out, v);
}

fn string(f: &Field) -> Result<String, GraphError> {
    String::from_utf8(f.payload.to_vec()).map_err(|_| GraphError::Malformed("non-UTF-8 name"))
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

/// `ValueInfoProto { name = 1, type = 2: TypeProto { tensor_type = 1: { elem_type = 1
/// (FLOAT = 1), shape = 2: { dim = 1: { dim_value = 1 | dim_param = 2 } } } } }`.
fn value_info(p: &Port) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in &p.dims {
        let mut dim = Vec::new();
        match d {
            Dim::Fixed(v) => put_uint(&mut dim, 1, *v as u64),
            Dim::Free(name) => put_bytes(&mut dim, 2, name.as_bytes()),
        }
        put_bytes(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    put_uint(&mut tensor, 1, 1);
    put_bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    put_bytes(&mut ty, 1, &tensor);
    let mut vi = Vec::new();
    put_bytes(&mut vi, 1, p.name.as_bytes());
    put_bytes(&mut vi, 2, &ty);
    vi
}

/// A node as far as the rewrites need it (`NodeProto`: inputs 1, outputs 2, name 3,
/// op_type 4); its attributes stay in `bytes`.
struct Node<'a> {
    bytes: &'a [u8],
    name: String,
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

fn node(bytes: &[u8]) -> Result<Node<'_>, GraphError> {
    let mut n = Node {
        bytes,
        name: String::new(),
        op: String::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    for f in fields(bytes)? {
        match (f.number, f.wire) {
            (1, 2) => n.inputs.push(string(&f)?),
            (2, 2) => n.outputs.push(string(&f)?),
            (3, 2) => n.name = string(&f)?,
            (4, 2) => n.op = string(&f)?,
            _ => {}
        }
    }
    Ok(n)
}

/// Whether a graph field is a node (`GraphProto.node` is field 1).
fn is_node(f: &Field) -> bool {
    f.number == 1 && f.wire == 2
}

/// Whether a graph field is an initializer (`GraphProto.initializer` is field 5).
fn is_initializer(f: &Field) -> bool {
    f.number == 5 && f.wire == 2
}

/// The nodes of a graph's fields, in order.
fn nodes<'a>(gfields: &[Field<'a>]) -> Result<Vec<Node<'a>>, GraphError> {
    gfields
        .iter()
        .filter(|f| is_node(f))
        .map(|f| node(f.payload))
        .collect()
}

/// Each graph field with its parsed node, if it is one (`nodes` is `nodes(gfields)`), so a
/// rewrite copies the graph in order without parsing a node twice.
fn with_nodes<'f, 'a>(
    gfields: &'f [Field<'a>],
    nodes: &'f [Node<'a>],
) -> impl Iterator<Item = (&'f Field<'a>, Option<&'f Node<'a>>)> {
    let mut next = nodes.iter();
    gfields
        .iter()
        .map(move |f| (f, if is_node(f) { next.next() } else { None }))
}

/// `node` rewritten as an `Identity` of its first input (same name and outputs).
fn identity(n: &Node) -> Result<Vec<u8>, GraphError> {
    let mut out = Vec::new();
    let mut first = true;
    for f in fields(n.bytes)? {
        match (f.number, f.wire) {
            (1, 2) if first => {
                first = false;
                put_field(&mut out, &f);
            }
            (1, 2) | (5, 2) => {} // other inputs, attributes
            (4, 2) => put_bytes(&mut out, 4, b"Identity"),
            _ => put_field(&mut out, &f),
        }
    }
    Ok(out)
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

/// A model with only the nodes that compute `cut.outputs` from `cut.inputs`, and the
/// initializers they use. Everything else (opsets, IR version, metadata) is copied.
pub fn extract(model: &[u8], cut: &Cut) -> Result<Vec<u8>, GraphError> {
    let (top, gfields) = split_model(model)?;
    let nodes = nodes(&gfields)?;
    let inits = initializers(&gfields)?;

    // Walk back from the outputs, stopping at the cut's inputs.
    let cut_in: HashSet<&str> = cut.inputs.iter().map(|p| p.name.as_str()).collect();
    let mut needed: HashSet<String> = cut.outputs.iter().map(|p| p.name.clone()).collect();
    let mut keep = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            let pass = cut.pass_through.contains(&n.name);
            let ins = if pass { &n.inputs[..1] } else { &n.inputs[..] };
            for input in ins {
                if !cut_in.contains(input.as_str()) && !input.is_empty() {
                    needed.insert(input.clone());
                }
            }
        }
    }
    // Every needed tensor must come from a kept node, an initializer or a cut input.
    let produced: HashSet<&str> = nodes
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .flat_map(|(n, _)| n.outputs.iter().map(String::as_str))
        .chain(inits.iter().map(|(name, _)| name.as_str()))
        .collect();
    for name in &needed {
        if !produced.contains(name.as_str()) {
            return Err(GraphError::Missing(name.clone()));
        }
    }
    for p in &cut.inputs {
        if !nodes.iter().any(|n| n.outputs.contains(&p.name)) {
            return Err(GraphError::Missing(p.name.clone()));
        }
    }
    for name in &cut.pass_through {
        if !nodes.iter().zip(&keep).any(|(n, k)| *k && &n.name == name) {
            return Err(GraphError::Missing(name.clone()));
        }
    }

    let mut g = Vec::new();
    for (n, _) in nodes.iter().zip(&keep).filter(|(_, k)| **k) {
        if cut.pass_through.contains(&n.name) {
            put_bytes(&mut g, 1, &identity(n)?);
        } else {
            put_bytes(&mut g, 1, n.bytes);
        }
    }
    for (name, f) in &inits {
        if needed.contains(name) {
            put_field(&mut g, f);
        }
    }
    // The graph's name; inputs, outputs and value_info are replaced.
    for f in gfields.iter().filter(|f| f.number == 2) {
        put_field(&mut g, f);
    }
    for p in &cut.inputs {
        put_bytes(&mut g, 11, &value_info(p));
    }
    for p in &cut.outputs {
        put_bytes(&mut g, 12, &value_info(p));
    }
    Ok(with_graph(&top, &g))
}

/// A model's top-level fields and its graph's fields (`ModelProto.graph` is field 7).
fn split_model(model: &[u8]) -> Result<(Vec<Field<'_>>, Vec<Field<'_>>), GraphError> {
    let top = fields(model)?;
    let graph = top
        .iter()
        .find(|f| f.number == 7 && f.wire == 2)
        .ok_or(GraphError::Malformed("no graph"))?;
    let gfields = fields(graph.payload)?;
    Ok((top, gfields))
}

/// The model of `top` with its graph replaced by `graph`.
fn with_graph(top: &[Field], graph: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in top {
        if f.number == 7 {
            put_bytes(&mut out, 7, graph);
        } else {
            put_field(&mut out, f);
        }
    }
    out
}

/// A 2-D convolution whose kernel spans the whole width of its input (`[O, 1, K, C]`
/// over `[B, 1, T, C]`, fed by a reshape of a `[B, C, T]` tensor), to be run as the
/// 1-D convolution it is (`[O, C, K]` over `[B, C, T]`): the same sums, without the
/// transpose and reshape in front (MUSICNN.md section 8, rewrite 2).
#[derive(Debug, Clone)]
pub struct Conv1d {
    /// The convolution node.
    pub conv: String,
    /// The `[B, C, T]` tensor it really reads.
    pub source: String,
}

/// Reads a float initializer: its dims and values (raw_data or float_data).
fn float_tensor(bytes: &[u8]) -> Result<(Vec<i64>, Vec<f32>), GraphError> {
    let (mut dims, mut values) = (Vec::new(), Vec::new());
    for f in fields(bytes)? {
        match (f.number, f.wire) {
            (1, 0) => dims.push(varint(f.payload, &mut 0)? as i64),
            (1, 2) => {
                let mut pos = 0;
                while pos < f.payload.len() {
                    dims.push(varint(f.payload, &mut pos)? as i64);
                }
            }
            (2, 0) if varint(f.payload, &mut 0)? != 1 => {
                return Err(GraphError::Malformed("initializer is not float32"))
            }
            (4, 2) | (9, 2) => values.extend(
                f.payload
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            (4, 5) => values.push(f32::from_le_bytes(
                f.payload
                    .try_into()
                    .map_err(|_| GraphError::Malformed("bad float"))?,
            )),
            _ => {}
        }
    }
    Ok((dims, values))
}

/// `TensorProto { dims = 1, data_type = 2, name = 8, raw_data = 9 }`.
fn tensor_proto(name: &str, dims: &[i64], data_type: u64, raw: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        put_uint(&mut t, 1, d as u64);
    }
    put_uint(&mut t, 2, data_type);
    put_bytes(&mut t, 8, name.as_bytes());
    put_bytes(&mut t, 9, raw);
    t
}

/// `AttributeProto { name = 1, ints = 8, type = 20 (INTS = 7) }`.
fn ints_attribute(name: &str, values: &[i64]) -> Vec<u8> {
    let mut a = Vec::new();
    put_bytes(&mut a, 1, name.as_bytes());
    for &v in values {
        put_uint(&mut a, 8, v as u64);
    }
    put_uint(&mut a, 20, 7);
    a
}

/// `NodeProto { input = 1, output = 2, name = 3, op_type = 4, attribute = 5 }`.
fn node_proto(
    name: &str,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: &[Vec<u8>],
) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        put_bytes(&mut n, 1, i.as_bytes());
    }
    for o in outputs {
        put_bytes(&mut n, 2, o.as_bytes());
    }
    put_bytes(&mut n, 3, name.as_bytes());
    put_bytes(&mut n, 4, op.as_bytes());
    for a in attrs {
        put_bytes(&mut n, 5, a);
    }
    n
}

/// The model with `rw.conv` replaced by a 1-D convolution over `rw.source` followed by an
/// `Unsqueeze` to the old output's shape; the old reshapes in front become unused (and
/// are dropped by [`extract`]).
pub fn conv_as_1d(model: &[u8], rw: &Conv1d) -> Result<Vec<u8>, GraphError> {
    let (top, gfields) = split_model(model)?;
    let nodes = nodes(&gfields)?;
    let conv = nodes
        .iter()
        .find(|n| n.name == rw.conv)
        .ok_or_else(|| GraphError::Missing(rw.conv.clone()))?;
    let (weight, bias) = match &conv.inputs[..] {
        [_, w, b] => (w.clone(), b.clone()),
        _ => return Err(GraphError::Missing(format!("{} weights and bias", rw.conv))),
    };
    let out = conv
        .outputs
        .first()
        .cloned()
        .ok_or(GraphError::Malformed("convolution without output"))?;
    let (dims, w) = match initializers(&gfields)?.iter().find(|(n, _)| *n == weight) {
        Some((_, f)) => float_tensor(f.payload)?,
        None => return Err(GraphError::Missing(weight)),
    };
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
    let mut raw = Vec::with_capacity(w.len() * 4);
    for oi in 0..o {
        for ci in 0..c {
            for ki in 0..k {
                raw.extend_from_slice(&w[(oi * k + ki) * c + ci].to_le_bytes());
            }
        }
    }
    let (w1, axes, flat) = (
        format!("{}/kernel_1d", rw.conv),
        format!("{}/axes_1d", rw.conv),
        format!("{}/out_1d", rw.conv),
    );
    let half = (k / 2) as i64;
    let mut g = Vec::new();
    for (f, n) in with_nodes(&gfields, &nodes) {
        if n.is_some_and(|n| n.name == rw.conv) {
            let conv1d = node_proto(
                &format!("{}/1d", rw.conv),
                "Conv",
                &[&rw.source, &w1, &bias],
                &[&flat],
                &[
                    ints_attribute("kernel_shape", &[k as i64]),
                    ints_attribute("pads", &[half, half]),
                ],
            );
            put_bytes(&mut g, 1, &conv1d);
            let unsqueeze = node_proto(
                &format!("{}/unsqueeze", rw.conv),
                "Unsqueeze",
                &[&flat, &axes],
                &[&out],
                &[],
            );
            put_bytes(&mut g, 1, &unsqueeze);
        } else {
            put_field(&mut g, f);
        }
    }
    put_bytes(
        &mut g,
        5,
        &tensor_proto(&w1, &[o as i64, c as i64, k as i64], 1, &raw),
    );
    put_bytes(
        &mut g,
        5,
        &tensor_proto(&axes, &[1], 7, &3i64.to_le_bytes()),
    );
    Ok(with_graph(&top, &g))
}

/// The name of an initializer (`TensorProto.name` is field 8).
fn tensor_name(t: &Field) -> Result<String, GraphError> {
    Ok(fields(t.payload)?
        .into_iter()
        .find(|f| f.number == 8 && f.wire == 2)
        .map(|f| string(&f))
        .transpose()?
        .unwrap_or_default())
}

/// The initializers of a graph's fields, by name.
fn initializers<'a>(gfields: &[Field<'a>]) -> Result<Vec<(String, Field<'a>)>, GraphError> {
    gfields
        .iter()
        .filter(|f| is_initializer(f))
        .map(|f| Ok((tensor_name(f)?, *f)))
        .collect()
}

/// One `Conv -> Relu -> BatchNormalization -> MaxPool` branch, as [`pool_first`] finds it.
struct Branch {
    conv: String,
    relu: String,
    bn: String,
    pool: String,
    /// The pool's output, which the rewritten branch's BN produces instead.
    out: String,
    /// Padded channels to slice off after the pool.
    sliced: bool,
    /// Channels whose filters were negated.
    signed: bool,
}

/// The model with each branch `Conv -> Relu -> BatchNormalization -> MaxPool` that
/// starts at a convolution in `convs` reordered to `Conv -> MaxPool -> Relu ->
/// BatchNormalization` (MUSICNN.md section 8, rewrite 1): the per-channel ReLU and batch
/// norm then run on the pooled tensor, not on every frequency bin. Exact because both are
/// monotonic per channel: where a channel's batch-norm scale is negative (gamma < 0), the
/// max of the branch is taken at the conv's minimum, so that channel's filter and bias are
/// negated (exact in floating point) and a `Mul` by -1 after the pool turns the max of the
/// negated output back into that minimum.
///
/// The convolutions also get output channels padded with zero filters up to a multiple
/// of `block`, and a `Slice` after the pool drops them: ONNX Runtime keeps a branch in
/// its blocked (NCHWc) layout, where the pool is vectorised, only when the channel count
/// is a multiple of its block (8 with AVX2, 16 with AVX-512); 204 or 51 channels are
/// not, and the pool then runs as scalar code behind a layout conversion. `block` 1 pads
/// nothing.
pub fn pool_first(model: &[u8], convs: &[String], block: usize) -> Result<Vec<u8>, GraphError> {
    let (top, gfields) = split_model(model)?;
    let nodes = nodes(&gfields)?;
    let inits = initializers(&gfields)?;
    // Who reads each tensor (a node reading one tensor twice counts once).
    let mut readers: HashMap<&str, Vec<&Node>> = HashMap::new();
    for n in &nodes {
        let mut seen = HashSet::new();
        for i in n.inputs.iter().filter(|i| seen.insert(i.as_str())) {
            readers.entry(i.as_str()).or_default().push(n);
        }
    }
    let readers_of = |tensor: &str| readers.get(tensor).map_or(&[][..], Vec::as_slice);
    // The one node reading `tensor`, which must be an `op`.
    let sole_reader = |tensor: &str, op: &str| -> Result<&Node, GraphError> {
        match readers_of(tensor) {
            [n] if n.op == op && n.outputs.len() == 1 => Ok(n),
            _ => Err(GraphError::Missing(format!(
                "{tensor} read only by a single {op}"
            ))),
        }
    };
    let float = |name: &str| -> Result<(Vec<i64>, Vec<f32>), GraphError> {
        let (_, f) = inits
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| GraphError::Missing(name.to_string()))?;
        float_tensor(f.payload)
    };
    let used_once = |tensor: &str| readers_of(tensor).len() == 1;

    let block = block.max(1);
    let mut branches = Vec::new();
    let mut new_inits: Vec<Vec<u8>> = Vec::new();
    let mut replaced: HashSet<String> = HashSet::new();
    for name in convs {
        let conv = nodes
            .iter()
            .find(|n| &n.name == name)
            .ok_or_else(|| GraphError::Missing(name.clone()))?;
        let [_, weight, bias] = &conv.inputs[..] else {
            return Err(GraphError::Missing(format!("{name} weights and bias")));
        };
        let [conv_out] = &conv.outputs[..] else {
            return Err(GraphError::Malformed("convolution without one output"));
        };
        if !used_once(weight) || !used_once(bias) {
            return Err(GraphError::Malformed("convolution weights shared"));
        }
        let relu = sole_reader(conv_out, "Relu")?;
        let bn = sole_reader(&relu.outputs[0], "BatchNormalization")?;
        let pool = sole_reader(&bn.outputs[0], "MaxPool")?;
        if bn.inputs.len() != 5 {
            return Err(GraphError::Malformed("batch norm without its 4 parameters"));
        }
        let (_, gamma) = float(&bn.inputs[1])?;
        let (wdims, mut w) = float(weight)?;
        let (_, mut b) = float(bias)?;
        let channels = b.len();
        if wdims.first() != Some(&(channels as i64))
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
        let mut dims = wdims.clone();
        dims[0] = padded as i64;
        let raw = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        new_inits.push(tensor_proto(weight, &dims, 1, &raw(&w)));
        new_inits.push(tensor_proto(bias, &[padded as i64], 1, &raw(&b)));
        replaced.insert(weight.clone());
        replaced.insert(bias.clone());
        let p = &pool.name;
        if padded != channels {
            new_inits.push(tensor_proto(
                &format!("{p}/start"),
                &[1],
                7,
                &0i64.to_le_bytes(),
            ));
            new_inits.push(tensor_proto(
                &format!("{p}/end"),
                &[1],
                7,
                &(channels as i64).to_le_bytes(),
            ));
            new_inits.push(tensor_proto(
                &format!("{p}/axis"),
                &[1],
                7,
                &1i64.to_le_bytes(),
            ));
        }
        if sign.contains(&-1.0) {
            new_inits.push(tensor_proto(
                &format!("{p}/sign"),
                &[1, channels as i64, 1, 1],
                1,
                &raw(&sign),
            ));
        }
        branches.push(Branch {
            conv: name.clone(),
            relu: relu.name.clone(),
            bn: bn.name.clone(),
            pool: pool.name.clone(),
            out: pool.outputs[0].clone(),
            sliced: padded != channels,
            signed: sign.contains(&-1.0),
        });
    }

    // A node with its inputs and outputs renamed, attributes and op kept.
    let renamed = |n: &Node, inputs: &[&str], outputs: &[&str]| -> Result<Vec<u8>, GraphError> {
        let mut out = Vec::new();
        for &i in inputs {
            put_bytes(&mut out, 1, i.as_bytes());
        }
        for &o in outputs {
            put_bytes(&mut out, 2, o.as_bytes());
        }
        for f in fields(n.bytes)? {
            if f.number != 1 && f.number != 2 {
                put_field(&mut out, &f);
            }
        }
        Ok(out)
    };
    let by_name = |name: &str| nodes.iter().find(|n| n.name == name);
    let mut g = Vec::new();
    for (f, n) in with_nodes(&gfields, &nodes) {
        if is_initializer(f) {
            if !replaced.contains(&tensor_name(f)?) {
                put_field(&mut g, f);
            }
            continue;
        }
        let Some(n) = n else {
            put_field(&mut g, f);
            continue;
        };
        if branches
            .iter()
            .any(|br| n.name == br.relu || n.name == br.bn)
        {
            continue; // emitted after the pool
        }
        let Some(br) = branches.iter().find(|br| n.name == br.pool) else {
            put_field(&mut g, f);
            continue;
        };
        let conv = by_name(&br.conv).ok_or_else(|| GraphError::Missing(br.conv.clone()))?;
        let relu = by_name(&br.relu).ok_or_else(|| GraphError::Missing(br.relu.clone()))?;
        let bn = by_name(&br.bn).ok_or_else(|| GraphError::Missing(br.bn.clone()))?;
        let p = &br.pool;
        let mut cur = format!("{p}/pooled");
        put_bytes(&mut g, 1, &renamed(n, &[&conv.outputs[0]], &[&cur])?);
        if br.sliced {
            let next = format!("{p}/sliced");
            let (start, end, axis) = (
                format!("{p}/start"),
                format!("{p}/end"),
                format!("{p}/axis"),
            );
            let slice = node_proto(
                &format!("{p}/slice"),
                "Slice",
                &[&cur, &start, &end, &axis],
                &[&next],
                &[],
            );
            put_bytes(&mut g, 1, &slice);
            cur = next;
        }
        if br.signed {
            let next = format!("{p}/signed");
            let sign = format!("{p}/sign");
            let mul = node_proto(&format!("{p}/sign"), "Mul", &[&cur, &sign], &[&next], &[]);
            put_bytes(&mut g, 1, &mul);
            cur = next;
        }
        put_bytes(&mut g, 1, &renamed(relu, &[&cur], &[&relu.outputs[0]])?);
        let mut bn_in: Vec<&str> = bn.inputs.iter().map(String::as_str).collect();
        bn_in[0] = &relu.outputs[0];
        put_bytes(&mut g, 1, &renamed(bn, &bn_in, &[&br.out])?);
    }
    for t in &new_inits {
        put_bytes(&mut g, 5, t);
    }
    Ok(with_graph(&top, &g))
}

/// The model with the time padding of each convolution in `convs` (`pads` =
/// `[t_begin, f_begin, t_end, f_end]`) set to `begin` and `end`: with `0, 0` the timbral
/// front-end computes only frames whose whole 7-frame window it is given (interior chunks
/// of a track need no halo thrown away), with `halo, 0` or `0, halo` only a patch's own
/// first or last frames, padded as the patch pads them.
pub fn with_time_pads(
    model: &[u8],
    convs: &[String],
    begin: i64,
    end: i64,
) -> Result<Vec<u8>, GraphError> {
    let (top, gfields) = split_model(model)?;
    let mut g = Vec::new();
    let mut found = 0;
    for f in &gfields {
        if !is_node(f) || !convs.contains(&node(f.payload)?.name) {
            put_field(&mut g, f);
            continue;
        }
        let mut n = Vec::new();
        let mut padded = false;
        for nf in fields(f.payload)? {
            if nf.number != 5 || nf.wire != 2 {
                put_field(&mut n, &nf);
                continue;
            }
            let attr = fields(nf.payload)?;
            let is_pads = attr.iter().any(|a| a.number == 1 && a.payload == b"pads");
            if !is_pads {
                put_field(&mut n, &nf);
                continue;
            }
            let mut old = Vec::new();
            for a in attr.iter().filter(|a| a.number == 8) {
                let mut pos = 0;
                while pos < a.payload.len() {
                    old.push(varint(a.payload, &mut pos)? as i64);
                }
            }
            let [_, f_begin, _, f_end] = old[..] else {
                return Err(GraphError::Malformed("convolution pads are not 2-D"));
            };
            put_bytes(
                &mut n,
                5,
                &ints_attribute("pads", &[begin, f_begin, end, f_end]),
            );
            padded = true;
        }
        if !padded {
            return Err(GraphError::Malformed("convolution without explicit pads"));
        }
        put_bytes(&mut g, 1, &n);
        found += 1;
    }
    if found != convs.len() {
        return Err(GraphError::Missing(convs.join(", ")));
    }
    Ok(with_graph(&top, &g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_byte_for_byte() {
        let mut buf = Vec::new();
        put_uint(&mut buf, 1, 300);
        put_bytes(&mut buf, 2, b"name");
        buf.extend_from_slice(&[(3 << 3) | 5, 1, 2, 3, 4]);
        let fs = fields(&buf).unwrap();
        assert_eq!(fs.len(), 3);
        let mut again = Vec::new();
        for f in &fs {
            put_field(&mut again, f);
        }
        assert_eq!(again, buf);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        put_bytes(&mut buf, 2, b"a long enough name");
        for cut in 0..buf.len() {
            let _ = fields(&buf[..cut]);
        }
        assert!(fields(&buf[..buf.len() - 1]).is_err());
        assert!(extract(
            &[0xff],
            &Cut {
                inputs: vec![],
                outputs: vec![],
                pass_through: vec![]
            }
        )
        .is_err());
    }

    #[test]
    fn float_initializers_round_trip() {
        let values = [1.5f32, -2.0, 0.25, 3.0, -0.5, 8.0];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = tensor_proto("w", &[2, 3], 1, &raw);
        let (dims, got) = float_tensor(&t).unwrap();
        assert_eq!(dims, vec![2, 3]);
        assert_eq!(got, values);
        let ints = tensor_proto("axes", &[1], 7, &3i64.to_le_bytes());
        assert!(float_tensor(&ints).is_err(), "int64 is not read as float");
    }

    #[test]
    fn time_pads_are_rewritten_only_on_the_named_convolutions() {
        let conv = |name: &str| {
            node_proto(
                name,
                "Conv",
                &["x", "w"],
                &[&format!("{name}:0")],
                &[
                    ints_attribute("kernel_shape", &[7, 38]),
                    ints_attribute("pads", &[3, 1, 3, 2]),
                ],
            )
        };
        let mut g = Vec::new();
        put_bytes(&mut g, 1, &conv("a"));
        put_bytes(&mut g, 1, &conv("b"));
        let mut model = Vec::new();
        put_uint(&mut model, 1, 8);
        put_bytes(&mut model, 7, &g);
        let pads_of = |model: &[u8]| -> Vec<(String, Vec<i64>)> {
            let (_, gfields) = split_model(model).unwrap();
            let mut out = Vec::new();
            for f in gfields.iter().filter(|f| f.number == 1) {
                let n = node(f.payload).unwrap();
                for a in fields(f.payload).unwrap().iter().filter(|a| a.number == 5) {
                    let attr = fields(a.payload).unwrap();
                    if attr.iter().any(|x| x.number == 1 && x.payload == b"pads") {
                        let v = attr
                            .iter()
                            .filter(|x| x.number == 8)
                            .map(|x| varint(x.payload, &mut 0).unwrap() as i64)
                            .collect();
                        out.push((n.name.clone(), v));
                    }
                }
            }
            out
        };
        let head = with_time_pads(&model, &["a".into()], 3, 0).unwrap();
        assert_eq!(
            pads_of(&head),
            vec![
                ("a".into(), vec![3, 1, 0, 2]),
                ("b".into(), vec![3, 1, 3, 2])
            ]
        );
        let valid = with_time_pads(&model, &["a".into(), "b".into()], 0, 0).unwrap();
        assert_eq!(
            pads_of(&valid),
            vec![
                ("a".into(), vec![0, 1, 0, 2]),
                ("b".into(), vec![0, 1, 0, 2])
            ]
        );
        assert!(matches!(
            with_time_pads(&model, &["c".into()], 0, 0),
            Err(GraphError::Missing(_))
        ));
    }

    /// `AttributeProto { name = 1, f = 2, type = 20 (FLOAT = 1) }`.
    fn float_attribute(name: &str, v: f32) -> Vec<u8> {
        let mut a = Vec::new();
        put_bytes(&mut a, 1, name.as_bytes());
        a.extend_from_slice(&[(2 << 3) | 5]);
        a.extend_from_slice(&v.to_le_bytes());
        put_uint(&mut a, 20, 1);
        a
    }

    /// A one-branch model like a MusiCNN branch: `x [1, 1, 6, 8]` -> Conv (5 filters,
    /// 3x4, time pads 1) -> Relu -> BatchNormalization -> MaxPool over all 5 frequency
    /// positions -> `p:0 [1, 5, 6, 1]`. Two of the five batch-norm scales are negative,
    /// and their biases keep the conv output positive, so their max is at the conv's
    /// minimum (not at a ReLU zero, where any order gives the same value).
    fn branch_model() -> Vec<u8> {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let w: Vec<f32> = (0..5 * 12)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let mut g = Vec::new();
        put_bytes(
            &mut g,
            1,
            &node_proto(
                "c",
                "Conv",
                &["x", "w", "b"],
                &["c:0"],
                &[
                    ints_attribute("kernel_shape", &[3, 4]),
                    ints_attribute("pads", &[1, 0, 1, 0]),
                ],
            ),
        );
        put_bytes(&mut g, 1, &node_proto("r", "Relu", &["c:0"], &["r:0"], &[]));
        put_bytes(
            &mut g,
            1,
            &node_proto(
                "n",
                "BatchNormalization",
                &["r:0", "gamma", "beta", "mean", "var"],
                &["n:0"],
                &[float_attribute("epsilon", 1e-3)],
            ),
        );
        put_bytes(
            &mut g,
            1,
            &node_proto(
                "p",
                "MaxPool",
                &["n:0"],
                &["p:0"],
                &[
                    ints_attribute("kernel_shape", &[1, 5]),
                    ints_attribute("strides", &[1, 5]),
                ],
            ),
        );
        put_bytes(&mut g, 2, b"branch");
        for (name, dims, v) in [
            ("w", vec![5, 1, 3, 4], w),
            ("b", vec![5], vec![0.1, 5.0, 0.3, 3.0, -0.1]),
            ("gamma", vec![5], vec![1.0, -2.0, 0.5, -0.3, 1.5]),
            ("beta", vec![5], vec![0.2, 0.1, -0.4, 0.3, 0.0]),
            ("mean", vec![5], vec![0.5, 0.2, 0.1, 0.0, 1.0]),
            ("var", vec![5], vec![1.0, 2.0, 0.5, 1.5, 0.8]),
        ] {
            put_bytes(&mut g, 5, &tensor_proto(name, &dims, 1, &f32s(&v)));
        }
        let port = |name: &str, dims: &[i64]| Port {
            name: name.into(),
            dims: dims.iter().map(|&d| Dim::Fixed(d)).collect(),
        };
        put_bytes(&mut g, 11, &value_info(&port("x", &[1, 1, 6, 8])));
        put_bytes(&mut g, 12, &value_info(&port("p:0", &[1, 5, 6, 1])));
        let mut opset = Vec::new();
        put_uint(&mut opset, 2, 17);
        let mut model = Vec::new();
        put_uint(&mut model, 1, 8);
        put_bytes(&mut model, 8, &opset);
        put_bytes(&mut model, 7, &g);
        model
    }

    fn ops(model: &[u8]) -> Vec<String> {
        let (_, gfields) = split_model(model).unwrap();
        gfields
            .iter()
            .filter(|f| f.number == 1)
            .map(|f| {
                let op = fields(f.payload)
                    .unwrap()
                    .into_iter()
                    .find(|a| a.number == 4)
                    .unwrap();
                string(&op).unwrap()
            })
            .collect()
    }

    #[test]
    fn pool_first_reorders_the_branch_and_pads_to_the_block() {
        let model = branch_model();
        let out = pool_first(&model, &["c".into()], 4).unwrap();
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
        let (_, gfields) = split_model(&out).unwrap();
        let inits = initializers(&gfields).unwrap();
        let tensor = |name: &str| {
            let found: Vec<_> = inits.iter().filter(|(n, _)| n == name).collect();
            assert_eq!(found.len(), 1, "one initializer {name}");
            float_tensor(found[0].1.payload).unwrap()
        };
        let (dims, w) = tensor("w");
        assert_eq!(dims, vec![8, 1, 3, 4], "5 filters padded to 8");
        let (_, w0) = float_tensor(
            initializers(&split_model(&model).unwrap().1).unwrap()[0]
                .1
                .payload,
        )
        .unwrap();
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
            ops(&pool_first(&model, &["c".into()], 1).unwrap()),
            ["Conv", "MaxPool", "Mul", "Relu", "BatchNormalization"]
        );
        assert!(matches!(
            pool_first(&model, &["nope".into()], 8),
            Err(GraphError::Missing(_))
        ));
        // A branch whose conv output is read twice is not rewritten.
        let (top, gfields) = split_model(&model).unwrap();
        let mut g = Vec::new();
        for f in &gfields {
            put_field(&mut g, f);
        }
        put_bytes(
            &mut g,
            1,
            &node_proto("x2", "Relu", &["c:0"], &["x2:0"], &[]),
        );
        assert!(matches!(
            pool_first(&with_graph(&top, &g), &["c".into()], 8),
            Err(GraphError::Missing(_))
        ));
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
            let rewritten = pool_first(&model, &["c".into()], block).unwrap();
            for seed in 0..4u32 {
                let x: Vec<f32> = (0..48u32)
                    .map(|i| ((i * 2654435761u32.wrapping_add(seed)) % 1000) as f32 / 250.0 - 2.0)
                    .collect();
                let (a, b) = (run(&model, &x), run(&rewritten, &x));
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
