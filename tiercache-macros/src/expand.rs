//! The expansion of `#[cached]`: the function's signature, attributes and docs stay as written;
//! its body becomes a lookup through `tiercache::__private` with the body as the loader.
//!
//! ```text
//! async fn f(args) -> R {
//!     let cache: &::tiercache::Cache = &(<cache>);
//!     let key = <template key | default key of the hashed arguments>, with tags and ttl;
//!     ::tiercache::__private::get_with::<R, _>(cache, key, async <body>).await
//!     // or try_get_with::<R, _> when R is a Result: only Ok values are cached
//! }
//! ```
//!
//! The body runs inside an `async` block that captures like a closure: by reference what it only
//! reads, by value what it consumes, so the key and the cache handle (which borrow the arguments)
//! are built first. The expansion's own locals are `mixed_site` hygienic: the body cannot see
//! them and they cannot shadow its names.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, GenericParam, ItemFn, LitStr, Pat, ReturnType, Type};

use crate::options::{Options, TagSpec};
use crate::template;

/// One argument of the function, other than the receiver.
struct Arg {
    /// `None` for patterns that bind no single name (`(a, b): (u32, u32)`, `_`).
    name: Option<syn::Ident>,
    pat: Box<Pat>,
}

/// The function as the expansion sees it.
struct Signature {
    fn_name: String,
    receiver: bool,
    args: Vec<Arg>,
}

impl Signature {
    fn has(&self, name: &str) -> bool {
        (name == "self" && self.receiver)
            || self
                .args
                .iter()
                .any(|a| a.name.as_ref().is_some_and(|n| n == name))
    }

    /// "`a`, `b`" or "none".
    fn list(&self) -> String {
        let mut names: Vec<String> = Vec::new();
        if self.receiver {
            names.push("`self`".into());
        }
        names.extend(
            self.args
                .iter()
                .filter_map(|a| a.name.as_ref().map(|n| format!("`{n}`"))),
        );
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// `#[cached(attr)] item`, expanded; errors carry the span to point at.
pub(crate) fn cached(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let func: ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("#[cached] applies to an `async fn` (a free fn or a method): {e}"),
        )
    })?;
    let options: Options = syn::parse2(attr)?;
    let sig = &func.sig;
    let fn_name = sig.ident.to_string();
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span,
            format!(
                "#[cached] needs an `async fn`, and `{fn_name}` is not async: the cache loads values \
                 asynchronously (Redis, coalesced loads), so declare it `async fn {fn_name}`"
            ),
        ));
    }
    let Some(cache) = &options.cache else {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[cached] needs to know which cache to use: add `cache = <expr>`, an expression over \
             the arguments, or a static, that gives a `tiercache::Cache` by reference, such as \
             `cache = state.cache`, `cache = self.cache` or `cache = CACHE` (a `static CACHE: LazyLock<Cache>`)",
        ));
    };
    let signature = Signature {
        fn_name: fn_name.clone(),
        receiver: sig.receiver().is_some(),
        args: sig
            .inputs
            .iter()
            .filter_map(|a| match a {
                FnArg::Typed(t) => Some(Arg {
                    name: match &*t.pat {
                        Pat::Ident(p) => Some(p.ident.clone()),
                        _ => None,
                    },
                    pat: t.pat.clone(),
                }),
                FnArg::Receiver(_) => None,
            })
            .collect(),
    };

    let ret: TokenStream = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => {
            if let Type::ImplTrait(_) = &**ty {
                return Err(syn::Error::new_spanned(
                    ty,
                    "#[cached] cannot cache an `impl Trait` return type: name the type, which must \
                     be `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`",
                ));
            }
            ty.to_token_stream()
        }
    };
    let is_result = options.result.is_some() || returns_result(&sig.output);
    let ret_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };

    let name = options
        .name
        .as_ref()
        .map_or_else(|| fn_name.clone(), LitStr::value);
    let cache_local = local("__tiercache_cache");
    let key_local = local("__tiercache_key");
    let category = match &options.category {
        Some(c) => quote_spanned!(c.span()=> &(#c)),
        None => quote!(&::tiercache::Category::from_static(#name)),
    };
    let decorate = decorations(&options, &signature)?;

    let key = match &options.key {
        Some(template) => {
            if let Some(span) = options.skip_span {
                return Err(syn::Error::new(
                    span,
                    "`skip` shapes only the default key; with a `key = \"...\"` template the key \
                     holds exactly what the template names: remove `skip`",
                ));
            }
            let parts = checked_template(template, &signature, "key")?;
            let (bindings, exprs) = template::render(&parts, "__tiercache_part", template.span());
            let category_local = local("__tiercache_category");
            quote! {
                let #key_local: ::tiercache::Key = {
                    #bindings
                    let #category_local: &::tiercache::Category = #category;
                    #cache_local.key(#category_local, [#(#exprs),*])
                } #decorate;
                let #key_local = ::core::option::Option::Some(&#key_local);
            }
        }
        None => {
            let args = key_args(&options, &signature, cache)?;
            let scope = match &options.name {
                Some(n) => quote!(#n),
                None => quote!(::core::concat!(::core::module_path!(), "::", #name)),
            };
            let mut types: Vec<TokenStream> = Vec::new();
            if signature.receiver {
                types.push(quote!(::core::any::type_name::<Self>()));
            }
            let mut consts: Vec<TokenStream> = Vec::new();
            for p in &sig.generics.params {
                match p {
                    GenericParam::Type(t) => {
                        let t = &t.ident;
                        types.push(quote!(::core::any::type_name::<#t>()));
                    }
                    GenericParam::Const(c) => {
                        let c = &c.ident;
                        consts.push(quote_spanned!(c.span()=> .arg(&#c)));
                    }
                    GenericParam::Lifetime(_) => {}
                }
            }
            let one = local("__tiercache_one");
            quote! {
                let #key_local: ::core::option::Option<::tiercache::Key> =
                    match ::tiercache::__private::KeyHasher::new(#scope, &[#(#types),*])
                        #(#consts)*
                        #(#args)*
                        .key(#cache_local, #category, #name)
                    {
                        ::core::option::Option::Some(#one) => ::core::option::Option::Some(#one #decorate),
                        ::core::option::Option::None => ::core::option::Option::None,
                    };
                let #key_local = #key_local.as_ref();
            }
        }
    };

    // Spanned at the return type: a value type that cannot be cached is reported there.
    let load = if is_result {
        quote_spanned!(ret_span=> ::tiercache::__private::try_get_with::<#ret, _>)
    } else {
        quote_spanned!(ret_span=> ::tiercache::__private::get_with::<#ret, _>)
    };
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = &func;
    let call = quote_spanned!(ret_span=> #load(#cache_local, #key_local, async #block).await);
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            let #cache_local: &::tiercache::Cache = &(#cache);
            #key
            #call
        }
    })
}

/// A local of the expansion, invisible to the body.
fn local(name: &str) -> syn::Ident {
    syn::Ident::new(name, Span::mixed_site())
}

/// Whether the return type's last path segment is `Result` (`Result<T, E>`, `io::Result<T>`).
fn returns_result(output: &ReturnType) -> bool {
    match output {
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
            _ => false,
        },
        ReturnType::Default => false,
    }
}

/// The `template`, parsed, with every interpolation naming an argument of the function.
fn checked_template(
    template: &LitStr,
    sig: &Signature,
    what: &str,
) -> syn::Result<Vec<template::Part>> {
    let text = template.value();
    if text.is_empty() {
        return Err(syn::Error::new(
            template.span(),
            format!("the {what} template is empty: name the arguments it holds, e.g. \"{{id}}\""),
        ));
    }
    let parts =
        template::parse(&text).map_err(|message| syn::Error::new(template.span(), message))?;
    for part in &parts {
        for v in part.interpolations() {
            if !sig.has(&v.root) {
                return Err(syn::Error::new(
                    template.span(),
                    format!(
                        "`{{{}}}` in this {what} template names no argument of `{}` (its arguments: {}); \
                         interpolate an argument, or a field of one such as `{{user.id}}`",
                        v.root,
                        sig.fn_name,
                        sig.list()
                    ),
                ));
            }
        }
    }
    Ok(parts)
}

/// `.with_tags([...]).with_ttl(...)` for the options that ask for them.
fn decorations(options: &Options, sig: &Signature) -> syn::Result<TokenStream> {
    let mut out = TokenStream::new();
    if !options.tags.is_empty() {
        let mut tags = Vec::new();
        for spec in &options.tags {
            tags.push(match spec {
                TagSpec::Expr(e) => quote_spanned!(e.span()=> #e),
                TagSpec::Template(t) => tag_from_template(t, sig)?,
            });
        }
        out.extend(quote!(.with_tags([#(#tags),*])));
    }
    if let Some(ttl) = &options.ttl {
        out.extend(quote_spanned!(ttl.span()=> .with_ttl(#ttl)));
    }
    Ok(out)
}

/// `Tag::new(kind, [parts...])` from `"kind:part:..."`.
fn tag_from_template(template: &LitStr, sig: &Signature) -> syn::Result<TokenStream> {
    let mut parts = checked_template(template, sig, "tag")?.into_iter();
    let kind = parts.next().and_then(|k| k.fixed()).unwrap_or_default();
    if kind.is_empty() {
        return Err(syn::Error::new(
            template.span(),
            "a tag template starts with its kind, fixed text before the first `:`, then the \
             interpolated parts: e.g. \"image:{name}\" or \"insights\"",
        ));
    }
    let parts: Vec<template::Part> = parts.collect();
    let (bindings, exprs) = template::render(&parts, "__tiercache_tag", template.span());
    Ok(if exprs.is_empty() {
        quote!(::tiercache::Tag::new(#kind, ::core::iter::empty::<&str>()))
    } else {
        quote!({
            #bindings
            ::tiercache::Tag::new(#kind, [#(#exprs),*])
        })
    })
}

/// The default key's arguments, each checked to be `Serialize`: every argument but the
/// receiver, the one `cache = <arg>` names, and the skipped ones.
fn key_args(options: &Options, sig: &Signature, cache: &Expr) -> syn::Result<Vec<TokenStream>> {
    for s in &options.skip {
        if s == "self" || !sig.has(&s.to_string()) {
            return Err(syn::Error::new(
                s.span(),
                format!(
                    "`skip({s})`: `{}` has no argument `{s}` (its arguments: {}); `self` is never part of the key",
                    sig.fn_name,
                    sig.list()
                ),
            ));
        }
    }
    let cache_arg = match cache {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(ToString::to_string),
        _ => None,
    };
    let mut out = Vec::new();
    for arg in &sig.args {
        let Some(name) = &arg.name else {
            return Err(syn::Error::new_spanned(
                &arg.pat,
                "this argument has no name, so it cannot be part of #[cached]'s default key: bind \
                 it to a name (`x: T`), or give a `key = \"...\"` template",
            ));
        };
        if options.skip.iter().any(|s| s == name) || cache_arg.as_deref() == Some(&name.to_string())
        {
            continue;
        }
        // Spanned at the argument: a bound that fails is reported there.
        out.push(quote_spanned!(name.span()=> .arg(&#name)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(attr: &str, item: &str) -> Result<String, String> {
        let attr: TokenStream = attr.parse().map_err(|e| format!("{e:?}"))?;
        let item: TokenStream = item.parse().map_err(|e| format!("{e:?}"))?;
        cached(attr, item)
            .map(|t| t.to_string())
            .map_err(|e| e.to_string())
    }

    fn error(attr: &str, item: &str) -> String {
        match expand(attr, item) {
            Ok(out) => panic!("expanded: {out}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_signature_stays_and_the_body_becomes_the_loader() {
        let out = expand(
            "cache = cache, key = \"{id}\"",
            "/// Docs.\n#[inline] pub(crate) async fn f<'a>(cache: &'a Cache, id: u64) -> Result<u64, E> { Ok(id) }",
        )
        .unwrap();
        assert!(
            out.starts_with(
                "# [doc = \" Docs.\"] # [inline] pub (crate) async fn f < 'a > (cache : & 'a Cache , id : u64) -> Result < u64 , E > {"
            ),
            "{out}"
        );
        assert!(
            out.contains("try_get_with :: < Result < u64 , E > , _ >"),
            "{out}"
        );
        assert!(out.contains("async { Ok (id) }"), "{out}");
        let out = expand(
            "cache = c, result",
            "async fn f(c: &Cache) -> Fallible<u8> { Ok(1) }",
        )
        .unwrap();
        assert!(out.contains("try_get_with"), "{out}");
        let out = expand("cache = c", "async fn f(c: &Cache) -> Option<u8> { None }").unwrap();
        assert!(
            out.contains("get_with :: < Option < u8 > , _ >") && !out.contains("try_get_with"),
            "{out}"
        );
    }

    #[test]
    fn the_default_key_leaves_out_the_receiver_the_cache_and_skipped_arguments() {
        let out = expand(
            "cache = cache, skip(b)",
            "async fn f(&self, cache: &Cache, a: u8, b: u8, c: u8) -> u8 { a }",
        )
        .unwrap();
        assert!(out.contains(". arg (& a) . arg (& c) . key"), "{out}");
        assert!(
            !out.contains("arg (& b)") && !out.contains("arg (& cache)"),
            "{out}"
        );
        assert!(out.contains("type_name :: < Self > ()"), "{out}");
    }

    #[test]
    fn misuse_is_explained() {
        let f = "async fn f(cache: &Cache, id: u64) -> u64 { id }";
        assert!(
            error("cache = cache, key = \"{id}\", skip(id)", f)
                .contains("`skip` shapes only the default key")
        );
        assert!(error("cache = cache, skip(nope)", f).contains("has no argument `nope`"));
        assert!(error("cache = cache, skip(self)", f).contains("`self` is never part of the key"));
        assert!(error("cache = cache, key = \"\"", f).contains("key template is empty"));
        assert!(error("cache = cache, tags = [\"{id}:x\"]", f).contains("starts with its kind"));
        assert!(error("cache = cache, tags = [\"t:{nope}\"]", f).contains("names no argument"));
        assert!(
            error(
                "cache = cache",
                "async fn f(cache: &Cache, (a, b): (u8, u8)) -> u8 { a }"
            )
            .contains("has no name")
        );
        assert!(
            error("cache = c", "async fn f(c: &Cache) -> impl Clone { 1 }")
                .contains("`impl Trait`")
        );
        assert!(error("cache = c", "struct S;").contains("applies to an `async fn`"));
    }
}
