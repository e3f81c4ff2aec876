//! Derives sub-models from the verified ONNX model, in memory, when it is loaded
//! (`graph::extract`): the shared engine needs the timbral front-end with a free time
//! axis and the per-patch remainder fed those features (`../shared/MUSICNN.md` §8).
//!
//! Made from the model's own bytes each time, nothing derived is ever written or shipped
//! (the model's licence applies to it), and the source is the file whose sha256 (or
//! probe) was checked. This is just enough protobuf to cut an ONNX graph: fields are
//! copied as bytes, only nodes, initializers, inputs and outputs are read.

use std::collections::HashSet;

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

/// A node as far as the cut needs it.
struct Node<'a> {
    bytes: &'a [u8],
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

fn node(bytes: &[u8]) -> Result<Node<'_>, GraphError> {
    let mut n = Node {
        bytes,
        name: String::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    for f in fields(bytes)? {
        match (f.number, f.wire) {
            (1, 2) => n.inputs.push(string(&f)?),
            (2, 2) => n.outputs.push(string(&f)?),
            (3, 2) => n.name = string(&f)?,
            _ => {}
        }
    }
    Ok(n)
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
    let top = fields(model)?;
    let graph = top
        .iter()
        .find(|f| f.number == 7 && f.wire == 2)
        .ok_or(GraphError::Malformed("no graph"))?;
    let gfields = fields(graph.payload)?;
    let mut nodes = Vec::new();
    for f in gfields.iter().filter(|f| f.number == 1 && f.wire == 2) {
        nodes.push(node(f.payload)?);
    }
    let mut inits = Vec::new();
    for f in gfields.iter().filter(|f| f.number == 5 && f.wire == 2) {
        let name = fields(f.payload)?
            .into_iter()
            .find(|t| t.number == 8 && t.wire == 2)
            .map(|t| string(&t))
            .transpose()?
            .unwrap_or_default();
        inits.push((name, *f));
    }

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
    let mut out = Vec::with_capacity(model.len());
    for f in &top {
        if f.number == 7 {
            put_bytes(&mut out, 7, &g);
        } else {
            put_field(&mut out, f);
        }
    }
    Ok(out)
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
}
