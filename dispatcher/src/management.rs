//! The RabbitMQ management HTTP API: closing a frozen runner's connection so
//! the broker requeues its job at once.

use std::time::Duration;

use reqwest::Url;

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("invalid management URL {0}")]
    InvalidUrl(String),
    #[error("management API unreachable: {0}")]
    Unreachable(String),
}

/// What closing a connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The connection was open and has been closed.
    Closed,
    /// No such connection: the broker has already dropped it.
    NotFound,
}

#[derive(Clone)]
pub struct Management {
    base: Url,
    user: String,
    password: String,
    http: reqwest::Client,
}

impl Management {
    pub fn new(url: &str) -> Result<Self, ManagementError> {
        let invalid = || ManagementError::InvalidUrl(broker::redact_url(url));
        let mut base = Url::parse(url).map_err(|_| invalid())?;
        let user = percent_decode(base.username());
        let password = base.password().map(percent_decode).unwrap_or_default();
        base.set_username("").map_err(|_| invalid())?;
        base.set_password(None).map_err(|_| invalid())?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ManagementError::Unreachable(e.to_string()))?;
        Ok(Management {
            base,
            user,
            password,
            http,
        })
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    /// Closes the connection whose client-provided name is `connection_name`.
    pub async fn close_connection(
        &self,
        connection_name: &str,
        reason: &str,
    ) -> Result<Closed, ManagementError> {
        let unreachable =
            |e: reqwest::Error| ManagementError::Unreachable(e.without_url().to_string());
        let connections: Vec<serde_json::Value> = self
            .http
            .get(self.endpoint(&["api", "connections"]))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unreachable)?
            .json()
            .await
            .map_err(unreachable)?;
        let found = connections.iter().find_map(|c| {
            let name = c["client_properties"]["connection_name"].as_str()?;
            (name == connection_name).then(|| c["name"].as_str().map(str::to_string))?
        });
        let Some(broker_name) = found else {
            return Ok(Closed::NotFound);
        };
        let response = self
            .http
            .delete(self.endpoint(&["api", "connections", &broker_name]))
            .basic_auth(&self.user, Some(&self.password))
            .header("X-Reason", reason)
            .send()
            .await
            .map_err(unreachable)?;
        match response.status().as_u16() {
            200..=299 => Ok(Closed::Closed),
            404 => Ok(Closed::NotFound),
            status => Err(ManagementError::Unreachable(format!(
                "DELETE answered {status}"
            ))),
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_and_are_decoded() {
        let m = Management::new("http://admin:p%40ss@127.0.0.1:15672").expect("valid");
        assert_eq!(m.user, "admin");
        assert_eq!(m.password, "p@ss");
        assert_eq!(
            m.endpoint(&["api", "connections", "127.0.0.1:1 -> 127.0.0.1:5672"])
                .as_str(),
            "http://127.0.0.1:15672/api/connections/127.0.0.1:1%20-%3E%20127.0.0.1:5672"
        );
        assert!(Management::new("not a url").is_err());
    }
}
