//! A restricted reader for small PyTorch `torch.save` files (textual-inversion `.pt`/`.bin` embeddings): the zip
//! archive's `data.pkl` is interpreted by a pickle machine that knows only the opcodes and the few globals a
//! dictionary of tensors needs (A1111's `safe.py` allow-list: `_rebuild_tensor_v2`, `_rebuild_parameter`, the
//! float storages, `OrderedDict`). Nothing in the file is ever executed: any other global is an error.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::NamedTensor;
use crate::error::{Error, Result};

/// The globals a tensor dictionary needs, as `module.name`.
const ALLOWED: &[&str] = &[
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch.FloatStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.DoubleStorage",
    "collections.OrderedDict",
];

#[derive(Debug, Clone)]
enum Value {
    /// `None`, booleans, floats: values sdrt does not read.
    Other,
    Int(i64),
    Text(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    Storage {
        class: String,
        key: String,
    },
    Tensor {
        shape: Vec<usize>,
        values: Vec<f32>,
    },
    Mark,
}

/// Every tensor of a `torch.save` zip file, named by its path of dictionary keys (`string_to_param.*`).
pub(crate) fn read_torch_tensors(path: &Path) -> Result<Vec<NamedTensor>> {
    let error = |problem: String| Error::File { path: path.to_owned(), reason: problem };
    let file = std::fs::File::open(path).map_err(|e| error(format!("cannot open: {e}")))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| error(format!("is not a torch.save zip archive ({e}); old (pre-1.6) pickle files are refused")))?;
    let names: Vec<String> = archive
        .file_names()
        .map(|name| name.map(|n| n.into_owned()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| error(format!("unreadable zip entry name: {e}")))?;
    let pickle_name =
        names.iter().find(|n| n.ends_with("data.pkl")).ok_or_else(|| error("has no data.pkl".to_owned()))?.clone();
    let prefix = pickle_name.trim_end_matches("data.pkl").to_owned();
    let mut read = |name: &str| -> Result<Vec<u8>> {
        let mut entry = archive.by_name(name).map_err(|e| error(format!("{name}: {e}")))?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| error(format!("{name}: {e}")))?;
        Ok(bytes)
    };
    let pickle = read(&pickle_name)?;
    let mut storages = HashMap::new();
    for name in names.iter().filter(|n| n.starts_with(&format!("{prefix}data/"))) {
        let key = name.trim_start_matches(&format!("{prefix}data/")).to_owned();
        storages.insert(key, read(name)?);
    }
    let value = Machine { bytes: &pickle, at: 0, stack: Vec::new(), memo: HashMap::new(), storages: &storages }
        .run()
        .map_err(|problem| error(format!("refused: {problem} (the file is read, never executed)")))?;
    let mut tensors = Vec::new();
    collect(&value, "", &mut tensors);
    Ok(tensors)
}

fn collect(value: &Value, name: &str, out: &mut Vec<NamedTensor>) {
    match value {
        Value::Tensor { shape, values } => {
            out.push(NamedTensor { name: name.to_owned(), shape: shape.clone(), values: values.clone() })
        }
        Value::Dict(items) => {
            for (key, item) in items {
                let key = match key {
                    Value::Text(text) => text.clone(),
                    Value::Int(n) => n.to_string(),
                    _ => continue,
                };
                let path = if name.is_empty() { key } else { format!("{name}.{key}") };
                collect(item, &path, out);
            }
        }
        _ => {}
    }
}

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    storages: &'a HashMap<String, Vec<u8>>,
}

type Step<T> = std::result::Result<T, String>;

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Step<&[u8]> {
        let end = self.at.checked_add(n).ok_or("the pickle ends early")?;
        let bytes = self.bytes.get(self.at..end).ok_or("the pickle ends early")?;
        self.at += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Step<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Step<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn pop(&mut self) -> Step<Value> {
        self.stack.pop().ok_or_else(|| "the pickle pops an empty stack".to_owned())
    }

    fn pop_mark(&mut self) -> Step<Vec<Value>> {
        let mark = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or("no MARK")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn text(&mut self, n: usize) -> Step<Value> {
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes).map(Value::Text).map_err(|_| "a string is not UTF-8".to_owned())
    }

    fn line(&mut self) -> Step<String> {
        let end = self.bytes[self.at..].iter().position(|&b| b == b'\n').ok_or("a GLOBAL line has no end")?;
        let text = String::from_utf8(self.take(end)?.to_vec()).map_err(|_| "a GLOBAL is not UTF-8")?;
        self.at += 1;
        Ok(text)
    }

    fn run(mut self) -> Step<Value> {
        loop {
            match self.u8()? {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::Other),
                0x88 | 0x89 => self.stack.push(Value::Other),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let b = self.take(2)?;
                    let v = i64::from(u16::from_le_bytes([b[0], b[1]]));
                    self.stack.push(Value::Int(v));
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, byte) in b.iter().enumerate().take(8) {
                        v |= i64::from(*byte) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v = v.wrapping_sub(1 << (8 * n));
                    }
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Other);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                b'q' => {
                    let i = u32::from(self.u8()?);
                    let top = self.stack.last().cloned().ok_or("BINPUT on an empty stack")?;
                    self.memo.insert(i, top);
                }
                b'r' => {
                    let i = self.u32()?;
                    let top = self.stack.last().cloned().ok_or("LONG_BINPUT on an empty stack")?;
                    self.memo.insert(i, top);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let top = self.stack.last().cloned().ok_or("MEMOIZE on an empty stack")?;
                    self.memo.insert(i, top);
                }
                b'h' => {
                    let i = u32::from(self.u8()?);
                    self.stack.push(self.memo.get(&i).cloned().ok_or("BINGET of an unknown slot")?);
                }
                b'j' => {
                    let i = self.u32()?;
                    self.stack.push(self.memo.get(&i).cloned().ok_or("LONG_BINGET of an unknown slot")?);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(self.bytes[self.at - 1] - 0x84);
                    let at = self.stack.len().checked_sub(n).ok_or("a TUPLE pops an empty stack")?;
                    let items = self.stack.split_off(at);
                    self.stack.push(Value::Tuple(items));
                }
                b'a' => {
                    let item = self.pop()?;
                    match self.stack.last_mut() {
                        Some(Value::List(list)) => list.push(item),
                        _ => return Err("APPEND outside a list".to_owned()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.stack.last_mut() {
                        Some(Value::List(list)) => list.extend(items),
                        _ => return Err("APPENDS outside a list".to_owned()),
                    }
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    match self.stack.last_mut() {
                        Some(Value::Dict(dict)) => dict.push((key, value)),
                        _ => return Err("SETITEM outside a dict".to_owned()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let Some(Value::Dict(dict)) = self.stack.last_mut() else {
                        return Err("SETITEMS outside a dict".to_owned());
                    };
                    let mut items = items.into_iter();
                    while let (Some(key), Some(value)) = (items.next(), items.next()) {
                        dict.push((key, value));
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let global = format!("{module}.{name}");
                    if !ALLOWED.contains(&global.as_str()) {
                        return Err(format!("the file references {global}, which a tensor file does not need"));
                    }
                    self.stack.push(Value::Global(global));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(storage(pid)?);
                }
                b'R' => {
                    let arguments = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.call(callable, arguments)?;
                    self.stack.push(result);
                }
                b'b' => {
                    // BUILD sets an object's state; on a tensor or dict it changes nothing sdrt reads.
                    self.pop()?;
                }
                op => return Err(format!("pickle opcode 0x{op:02x} is not one a tensor file uses")),
            }
        }
    }

    fn call(&self, callable: Value, arguments: Value) -> Step<Value> {
        let (Value::Global(name), Value::Tuple(args)) = (callable, arguments) else {
            return Err("REDUCE of something that is not an allowed global".to_owned());
        };
        match name.as_str() {
            "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
            "torch._utils._rebuild_parameter" => args.into_iter().next().ok_or_else(|| "empty parameter".to_owned()),
            "torch._utils._rebuild_tensor_v2" => self.tensor(args),
            other => Err(format!("{other} cannot be called")),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, …)` for a contiguous tensor.
    fn tensor(&self, args: Vec<Value>) -> Step<Value> {
        let mut args = args.into_iter();
        let (Some(Value::Storage { class, key }), Some(Value::Int(offset)), Some(Value::Tuple(size))) =
            (args.next(), args.next(), args.next())
        else {
            return Err("a tensor without storage, offset and size".to_owned());
        };
        let shape: Vec<usize> = size
            .iter()
            .map(|v| match v {
                Value::Int(n) => usize::try_from(*n).map_err(|_| "a negative size".to_owned()),
                _ => Err("a size that is not a number".to_owned()),
            })
            .collect::<Step<_>>()?;
        if let Some(Value::Tuple(stride)) = args.next() {
            let mut expected = 1i64;
            for (dim, step) in shape.iter().zip(stride.iter()).rev() {
                if *dim > 1 && !matches!(step, Value::Int(s) if *s == expected) {
                    return Err("a tensor that is not contiguous".to_owned());
                }
                expected = expected.saturating_mul(i64::try_from(*dim).unwrap_or(i64::MAX));
            }
        }
        let bytes = self.storages.get(&key).ok_or_else(|| format!("storage {key} is missing from the archive"))?;
        let width = match class.as_str() {
            "torch.FloatStorage" => 4,
            "torch.DoubleStorage" => 8,
            _ => 2,
        };
        let past = || "a tensor runs past its storage".to_owned();
        let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(past)?;
        let start = usize::try_from(offset).ok().and_then(|o| o.checked_mul(width)).ok_or_else(past)?;
        let end = count.checked_mul(width).and_then(|n| n.checked_add(start)).ok_or_else(past)?;
        let data = bytes.get(start..end).ok_or_else(past)?;
        let values = match class.as_str() {
            "torch.FloatStorage" => {
                data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            "torch.DoubleStorage" => {
                data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32).collect()
            }
            "torch.HalfStorage" => {
                data.chunks_exact(2).map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect()
            }
            _ => {
                data.chunks_exact(2).map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect()
            }
        };
        Ok(Value::Tensor { shape, values })
    }
}

/// A persistent id `('storage', class, key, location, numel)`.
fn storage(pid: Value) -> Step<Value> {
    let Value::Tuple(items) = pid else { return Err("a persistent id that is not a tuple".to_owned()) };
    match items.as_slice() {
        [Value::Text(kind), Value::Global(class), Value::Text(key), ..] if kind == "storage" => {
            Ok(Value::Storage { class: class.clone(), key: key.clone() })
        }
        _ => Err("a persistent id that is not a tensor storage".to_owned()),
    }
}
