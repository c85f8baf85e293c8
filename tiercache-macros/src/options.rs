//! The options inside `#[cached(...)]`, parsed and checked on their own (the function is checked
//! against them in `expand`).
//!
//! Each option is given at most once; an unknown or repeated option is an error at its name, and
//! a value of the wrong shape (a `key` that is not a string, a `ttl` that is a bare number) says
//! what to write instead.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Token, bracketed, parenthesized};

/// Every option, in the order the docs list them.
const OPTIONS: &str = "cache, category, ttl, tags, key, skip, name, result";

/// One entry of `tags = [...]`.
pub(crate) enum TagSpec {
    /// `"kind:{arg}:..."`: built with `Tag::new` from the template.
    Template(LitStr),
    /// Any expression of type `tiercache::Tag`.
    Expr(Expr),
}

/// The parsed options; `expand` checks them against the function.
#[derive(Default)]
pub(crate) struct Options {
    /// `cache = <expr>`: required (checked in `expand`, which knows where to point).
    pub(crate) cache: Option<Expr>,
    /// `category = <expr>`: a `tiercache::Category`.
    pub(crate) category: Option<Expr>,
    /// `ttl = <expr>`: a `std::time::Duration`.
    pub(crate) ttl: Option<Expr>,
    /// `tags = [...]`.
    pub(crate) tags: Vec<TagSpec>,
    /// `key = "template"`.
    pub(crate) key: Option<LitStr>,
    /// `skip(a, b)`: arguments left out of the default key.
    pub(crate) skip: Vec<Ident>,
    /// The `skip` keyword, to point at when `skip` conflicts with `key`.
    pub(crate) skip_span: Option<Span>,
    /// `name = "..."`: the function's name in keys and the default category.
    pub(crate) name: Option<LitStr>,
    /// `result`: the return type is a `Result` even if its name does not say so.
    pub(crate) result: Option<Span>,
}

impl Parse for Options {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut options = Options::default();
        let mut seen: Vec<String> = Vec::new();
        while !input.is_empty() {
            // Any identifier, keywords included, so that `type = ...` is reported as unknown
            // rather than as a parse error.
            let option = input.call(Ident::parse_any)?;
            let name = option.to_string();
            if seen.contains(&name) {
                return Err(syn::Error::new(
                    option.span(),
                    format!("duplicate `{name}` option: give each option once"),
                ));
            }
            match name.as_str() {
                "cache" => {
                    equals(input, &option, "cache = state.cache")?;
                    options.cache = Some(input.parse()?);
                }
                "category" => {
                    equals(input, &option, "category = MY_CATEGORY")?;
                    options.category = Some(input.parse()?);
                }
                "ttl" => {
                    equals(input, &option, "ttl = Duration::from_secs(60)")?;
                    let ttl: Expr = input.parse()?;
                    if let Expr::Lit(ExprLit {
                        lit: Lit::Int(_) | Lit::Float(_),
                        ..
                    }) = &ttl
                    {
                        return Err(syn::Error::new_spanned(
                            ttl,
                            "`ttl` takes a `std::time::Duration`, e.g. `ttl = Duration::from_secs(60)`",
                        ));
                    }
                    options.ttl = Some(ttl);
                }
                "tags" => {
                    equals(input, &option, "tags = [\"image:{name}\"]")?;
                    options.tags = parse_tags(input)?;
                }
                "key" => {
                    equals(input, &option, "key = \"{id}\"")?;
                    options.key = Some(string(
                        input,
                        "`key` takes a string template, e.g. `key = \"{id}\"` or `key = \"{image}:{tag}\"`",
                    )?);
                }
                "name" => {
                    equals(input, &option, "name = \"load_user\"")?;
                    let lit = string(input, "`name` takes a string, e.g. `name = \"load_user\"`")?;
                    if lit.value().is_empty() {
                        return Err(syn::Error::new(lit.span(), "`name` must not be empty"));
                    }
                    options.name = Some(lit);
                }
                "skip" => {
                    if !input.peek(syn::token::Paren) {
                        return Err(syn::Error::new(
                            option.span(),
                            "`skip` lists arguments in parentheses: `skip(arg1, arg2)`",
                        ));
                    }
                    let content;
                    parenthesized!(content in input);
                    // `parse_any` so that `skip(self)` gets its own explanation (in `expand`).
                    let list = Punctuated::<Ident, Token![,]>::parse_terminated_with(
                        &content,
                        Ident::parse_any,
                    )?;
                    options.skip = list.into_iter().collect();
                    options.skip_span = Some(option.span());
                }
                "result" => {
                    if input.peek(Token![=]) {
                        return Err(syn::Error::new(
                            option.span(),
                            "`result` is a flag and takes no value: write `result` alone",
                        ));
                    }
                    options.result = Some(option.span());
                }
                _ => {
                    return Err(syn::Error::new(
                        option.span(),
                        format!("unknown #[cached] option `{name}`; the options are: {OPTIONS}"),
                    ));
                }
            }
            seen.push(name);
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(options)
    }
}

/// The `=` after `option`, or an error showing `example`.
fn equals(input: ParseStream<'_>, option: &Ident, example: &str) -> syn::Result<()> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        Ok(())
    } else {
        Err(syn::Error::new(
            option.span(),
            format!("`{option}` takes a value: `{example}`"),
        ))
    }
}

/// A string literal, or an error with `message` at what stands there instead.
fn string(input: ParseStream<'_>, message: &str) -> syn::Result<LitStr> {
    if input.peek(LitStr) {
        input.parse()
    } else {
        Err(input.error(message))
    }
}

/// `[entry, ...]`: string literals are templates, anything else an expression.
fn parse_tags(input: ParseStream<'_>) -> syn::Result<Vec<TagSpec>> {
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(
            "`tags` takes a list in brackets: `tags = [\"insights\", \"image:{name}\", my_tag(&x)]`",
        ));
    }
    let content;
    bracketed!(content in input);
    let entries = Punctuated::<Expr, Token![,]>::parse_terminated(&content)?;
    Ok(entries
        .into_iter()
        .map(|e| match e {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => TagSpec::Template(s),
            other => TagSpec::Expr(other),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> syn::Result<Options> {
        syn::parse_str(s)
    }

    fn error(s: &str) -> String {
        match parse(s) {
            Ok(_) => panic!("`{s}` parsed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_option_parses() {
        let o = parse(
            r#"cache = self.cache, category = CAT, ttl = Duration::from_secs(5),
               tags = ["insights", "image:{name}", Tag::new("x", [&y])], key = "{id}",
               name = "load", result"#,
        )
        .unwrap();
        assert!(o.cache.is_some() && o.category.is_some() && o.ttl.is_some());
        assert_eq!(o.tags.len(), 3);
        assert!(matches!(o.tags[0], TagSpec::Template(_)));
        assert!(matches!(o.tags[2], TagSpec::Expr(_)));
        assert_eq!(o.key.unwrap().value(), "{id}");
        assert_eq!(o.name.unwrap().value(), "load");
        assert!(o.result.is_some());
        let o = parse("cache = CACHE, skip(a, b,)").unwrap();
        let skip: Vec<String> = o.skip.iter().map(ToString::to_string).collect();
        assert_eq!(skip, ["a", "b"]);
        assert!(parse("").unwrap().cache.is_none());
    }

    #[test]
    fn mistakes_say_what_to_write() {
        assert!(error("cache = C, typo = 1").contains("unknown #[cached] option `typo`"));
        assert!(error("type = u32").contains("unknown #[cached] option `type`"));
        assert!(error("cache = C, cache = D").contains("duplicate `cache` option"));
        assert!(error("cache").contains("`cache = state.cache`"));
        assert!(error("ttl = 60").contains("Duration::from_secs(60)"));
        assert!(error("key = id").contains("string template"));
        assert!(error("name = \"\"").contains("must not be empty"));
        assert!(error("skip = a").contains("skip(arg1, arg2)"));
        assert!(error("tags = \"a\"").contains("list in brackets"));
        assert!(error("result = true").contains("flag"));
    }
}
