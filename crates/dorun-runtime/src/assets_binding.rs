//! `env.<binding>` of the `assets` config: a Fetcher whose `fetch()` answers from the
//! Worker's static assets (see `dorun-assets`), the way `env.ASSETS.fetch` reaches
//! Cloudflare's asset worker. The JS side is `js/11_assets.js`.

use std::cell::RefCell;
use std::rc::Rc;

use deno_core::{op2, OpState, ToJsBuffer};
use deno_error::JsErrorBox;

use std::sync::Arc;

use dorun_assets::Assets;

#[derive(serde::Serialize)]
pub struct AssetReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<ToJsBuffer>,
}

/// Answers a request from the assets (file reads happen on a blocking thread).
#[op2]
#[serde]
pub async fn op_dorun_assets_fetch(
    state: Rc<RefCell<OpState>>,
    #[string] method: String,
    #[string] url: String,
    #[serde] headers: Vec<(String, String)>,
) -> Result<AssetReply, JsErrorBox> {
    let assets = state
        .borrow()
        .try_borrow::<Arc<Assets>>()
        .cloned()
        .ok_or_else(|| JsErrorBox::generic("this Worker has no assets configured"))?;
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|e| JsErrorBox::type_error(e.to_string()))?;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| JsErrorBox::type_error(format!("invalid URL '{url}': {e}")))?;
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            map.append(name, value);
        }
    }
    let response = tokio::task::spawn_blocking(move || assets.fetch(&method, &uri, &map))
        .await
        .map_err(|e| JsErrorBox::generic(format!("asset read failed: {e}")))?;
    Ok(AssetReply {
        status: response.status.as_u16(),
        headers: response
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: if response.body.is_empty() {
            None
        } else {
            Some(response.body.to_vec().into())
        },
    })
}
