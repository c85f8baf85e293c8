//! Key and tag templates: `"{image}:{tag}"`, `"image:{name}"`, `"v2-{user.id}"`.
//!
//! A template is split on `:` into parts (the parts of a `tiercache::Key` or `Tag`); each part
//! is fixed text with `{path}` interpolations, where `path` is an argument (or `self`) followed
//! by `.field` or `.0` accesses. `{{` and `}}` are literal braces. Interpolated values are turned
//! into text with `ToString` and passed to the key builder as untrusted parts, so a value holding
//! `:`, `*` or `}` is escaped there and can never add a part or change another key's meaning.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};

/// One `{path}` inside a template.
#[derive(Debug, PartialEq)]
pub(crate) struct Interpolation {
    /// The argument (or `self`).
    pub(crate) root: String,
    /// Field names or tuple indices after it.
    pub(crate) fields: Vec<String>,
}

/// A piece of a part.
#[derive(Debug, PartialEq)]
pub(crate) enum Piece {
    Text(String),
    Value(Interpolation),
}

/// One `:`-separated part of a template.
#[derive(Debug, PartialEq)]
pub(crate) struct Part(pub(crate) Vec<Piece>);

impl Part {
    /// The part's text when it interpolates nothing.
    pub(crate) fn fixed(&self) -> Option<String> {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => Some(t.as_str()),
                Piece::Value(_) => None,
            })
            .collect()
    }

    pub(crate) fn interpolations(&self) -> impl Iterator<Item = &Interpolation> {
        self.0.iter().filter_map(|p| match p {
            Piece::Value(v) => Some(v),
            Piece::Text(_) => None,
        })
    }
}

/// Splits `template` into its parts; the error says what is wrong with it.
pub(crate) fn parse(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inner.push(c),
                        None => {
                            return Err(format!(
                                "unclosed `{{` in `{template}`: write `{{arg}}` to interpolate an argument, `{{{{` for a brace"
                            ));
                        }
                    }
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Value(interpolation(&inner)?));
            }
            '}' => {
                return Err(format!(
                    "unmatched `}}` in `{template}`: write `}}}}` for a brace"
                ));
            }
            ':' => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                parts.push(Part(std::mem::take(&mut pieces)));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    parts.push(Part(pieces));
    Ok(parts)
}

/// `arg`, `arg.field`, `self.id`, `pair.0`.
fn interpolation(inner: &str) -> Result<Interpolation, String> {
    let mut segments = inner.trim().split('.');
    let root = segments.next().unwrap_or_default().trim();
    if !is_ident(root) && root != "self" {
        return Err(format!(
            "`{{{inner}}}` is not an argument: interpolate an argument, or a field of one, such as `{{id}}` or `{{user.id}}`"
        ));
    }
    let mut fields = Vec::new();
    for s in segments {
        let s = s.trim();
        let index = !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        if !is_ident(s) && !index {
            return Err(format!(
                "`{{{inner}}}`: after the argument come only `.field` or `.0` accesses"
            ));
        }
        fields.push(s.to_owned());
    }
    Ok(Interpolation {
        root: root.to_owned(),
        fields,
    })
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
        && s != "_"
}

impl Interpolation {
    /// `root.field...` as an expression, spanned at the template so that errors point there.
    fn expr(&self, span: Span) -> TokenStream {
        let root = proc_macro2::Ident::new(&self.root, span);
        let fields = self.fields.iter().map(|f| match f.parse::<u32>() {
            Ok(index) => {
                let index = syn::Index { index, span };
                quote_spanned!(span=> .#index)
            }
            Err(_) => {
                let field = proc_macro2::Ident::new(f, span);
                quote_spanned!(span=> .#field)
            }
        });
        quote_spanned!(span=> #root #(#fields)*)
    }
}

/// Code for `parts` as `&str`s: statements binding the interpolated parts to fresh locals named
/// `{prefix}{i}`, and the list of expressions (literals or those locals) in order.
pub(crate) fn render(parts: &[Part], prefix: &str, span: Span) -> (TokenStream, Vec<TokenStream>) {
    let mut bindings = TokenStream::new();
    let mut exprs = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if let Some(text) = part.fixed() {
            exprs.push(quote!(#text));
            continue;
        }
        let local = format_ident!("{}{}", prefix, i, span = Span::mixed_site());
        let value = match part.0.as_slice() {
            // The common case, and the cheapest: `ToString` is specialized for strings.
            [Piece::Value(v)] => {
                let e = v.expr(span);
                quote_spanned!(span=> ::std::string::ToString::to_string(&#e))
            }
            pieces => {
                let mut format = String::new();
                let mut args = Vec::new();
                for p in pieces {
                    match p {
                        Piece::Text(t) => format.push_str(&t.replace('{', "{{").replace('}', "}}")),
                        Piece::Value(v) => {
                            format.push_str("{}");
                            args.push(v.expr(span));
                        }
                    }
                }
                quote_spanned!(span=> ::std::format!(#format, #(#args),*))
            }
        };
        bindings.extend(quote!(let #local: ::std::string::String = #value;));
        exprs.push(quote!(#local.as_str()));
    }
    (bindings, exprs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Piece {
        Piece::Text(s.into())
    }

    fn value(root: &str, fields: &[&str]) -> Piece {
        Piece::Value(Interpolation {
            root: root.into(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        })
    }

    #[test]
    fn templates_split_into_parts_and_pieces() {
        assert_eq!(parse("{id}").unwrap(), [Part(vec![value("id", &[])])]);
        assert_eq!(
            parse("{image}:{tag}").unwrap(),
            [
                Part(vec![value("image", &[])]),
                Part(vec![value("tag", &[])])
            ]
        );
        assert_eq!(
            parse("image:v{ user.id }-{self.0}:").unwrap(),
            [
                Part(vec![text("image")]),
                Part(vec![
                    text("v"),
                    value("user", &["id"]),
                    text("-"),
                    value("self", &["0"])
                ]),
                Part(vec![]),
            ]
        );
        assert_eq!(parse("a{{b}}").unwrap(), [Part(vec![text("a{b}")])]);
        assert_eq!(parse("insights").unwrap()[0].fixed().unwrap(), "insights");
    }

    #[test]
    fn malformed_templates_say_why() {
        assert!(parse("{id").unwrap_err().contains("unclosed"));
        assert!(parse("id}").unwrap_err().contains("unmatched"));
        assert!(parse("{}").unwrap_err().contains("not an argument"));
        assert!(parse("{id + 1}").unwrap_err().contains("not an argument"));
        assert!(parse("{a.b()}").unwrap_err().contains("`.field`"));
        assert!(parse("{_}").is_err());
    }

    #[test]
    fn rendering_binds_only_interpolated_parts() {
        let parts = parse("v1:{id}:{a}-{b}").unwrap();
        let (bindings, exprs) = render(&parts, "__p", Span::call_site());
        assert_eq!(exprs.len(), 3);
        assert_eq!(exprs[0].to_string(), "\"v1\"");
        let b = bindings.to_string();
        assert!(b.contains("ToString :: to_string (& id)"), "{b}");
        assert!(b.contains("format ! (\"{}-{}\" , a , b)"), "{b}");
    }
}
