//! Just enough HTTP/1.1 for one JSON API: request heads in, fixed-length responses out.
//!
//! Strict where leniency would hide a client bug (CRLF line ends, one request line, known
//! versions) and bounded everywhere, because the simulator must survive whatever a test throws
//! at it.

/// Longest request head accepted; beyond it the answer is 431.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;
/// GETs carry no body; one is read and discarded only up to this size.
pub(crate) const MAX_BODY: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    pub target: String,
    pub http10: bool,
    pub headers: Vec<(String, String)>,
}

/// Why a head was refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    Malformed(&'static str),
    TooManyHeaders,
    Version,
}

impl HeadError {
    pub(crate) fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooManyHeaders => 431,
            HeadError::Version => 505,
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            HeadError::Malformed(m) => m,
            HeadError::TooManyHeaders => "too many header fields",
            HeadError::Version => "only HTTP/1.0 and HTTP/1.1 are served",
        }
    }
}

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    /// Chunked uploads are not worth parsing for a GET-only API: answered 501, then closed.
    Chunked,
    Invalid,
    TooLarge,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Request {
    /// `head` is everything up to and including the blank line.
    pub(crate) fn parse(head: &[u8]) -> Result<Request, HeadError> {
        let head = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
        let text = std::str::from_utf8(head)
            .map_err(|_| HeadError::Malformed("request head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(HeadError::Malformed("malformed request line"));
        };
        if !is_token(method) {
            return Err(HeadError::Malformed("malformed method"));
        }
        if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
            return Err(HeadError::Malformed("malformed request target"));
        }
        let http10 = match version {
            "HTTP/1.1" => false,
            "HTTP/1.0" => true,
            v if v.starts_with("HTTP/") => return Err(HeadError::Version),
            _ => return Err(HeadError::Malformed("malformed request line")),
        };
        let mut headers = Vec::new();
        for line in lines {
            if headers.len() == MAX_HEADERS {
                return Err(HeadError::TooManyHeaders);
            }
            // Obsolete line folding and stray control bytes are how request smuggling starts.
            if line.starts_with([' ', '\t']) {
                return Err(HeadError::Malformed("folded header line"));
            }
            if line.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                return Err(HeadError::Malformed("control character in a header"));
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(HeadError::Malformed("header line without a colon"));
            };
            if !is_token(name) {
                return Err(HeadError::Malformed("malformed header name"));
            }
            headers.push((
                name.to_string(),
                value.trim_matches([' ', '\t']).to_string(),
            ));
        }
        Ok(Request {
            method: method.to_string(),
            target: target.to_string(),
            http10,
            headers,
        })
    }

    pub(crate) fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.headers_named(name).next()
    }

    pub(crate) fn keep_alive(&self) -> bool {
        let tokens: Vec<String> = self
            .headers_named("connection")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        if tokens.iter().any(|t| t == "close") {
            return false;
        }
        !self.http10 || tokens.iter().any(|t| t == "keep-alive")
    }

    pub(crate) fn framing(&self) -> Framing {
        if self.header("transfer-encoding").is_some() {
            return Framing::Chunked;
        }
        let mut length = None;
        for v in self.headers_named("content-length") {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Framing::Invalid;
            }
            let Ok(n) = v.parse::<u64>() else {
                return Framing::TooLarge;
            };
            // Conflicting lengths are ambiguous framing: refuse rather than guess.
            if length.is_some_and(|l| l != n) {
                return Framing::Invalid;
            }
            length = Some(n);
        }
        match length {
            Some(n) if n > MAX_BODY => Framing::TooLarge,
            Some(n) => Framing::Length(n),
            None => Framing::Length(0),
        }
    }
}

/// Method and target of a head that did not parse, for the request log: lossy, short.
pub(crate) fn lossy_request_line(head: &[u8]) -> (String, String) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').splitn(3, ' ');
    let method = crate::text::excerpt(parts.next().unwrap_or_default(), 32);
    let target = crate::text::excerpt(parts.next().unwrap_or_default(), 256);
    (method, target)
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The status line and headers of a JSON response whose body is `content_length` bytes.
pub(crate) fn response_head(
    status: u16,
    extra: &[(&'static str, String)],
    content_length: usize,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\nConnection: {}\r\n",
        reason(status),
        if keep_alive { "keep-alive" } else { "close" },
    );
    for (name, value) in extra {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, HeadError> {
        Request::parse(s.as_bytes())
    }

    #[test]
    fn parses_a_get() {
        let r = parse("GET /v2/x?a=1 HTTP/1.1\r\nHost: h\r\nAuthorization:  Bearer k \r\n\r\n")
            .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/v2/x?a=1");
        assert_eq!(r.header("authorization"), Some("Bearer k"));
        assert!(r.keep_alive());
        assert_eq!(r.framing(), Framing::Length(0));
    }

    #[test]
    fn connection_semantics() {
        assert!(!parse("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .keep_alive());
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive());
        assert!(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .keep_alive());
    }

    #[test]
    fn framing() {
        let f = |h: &str| {
            parse(&format!("GET / HTTP/1.1\r\n{h}\r\n\r\n"))
                .unwrap()
                .framing()
        };
        assert_eq!(f("Content-Length: 5"), Framing::Length(5));
        assert_eq!(
            f("Content-Length: 5\r\nContent-Length: 6"),
            Framing::Invalid
        );
        assert_eq!(f("Content-Length: -1"), Framing::Invalid);
        assert_eq!(
            f("Content-Length: 99999999999999999999999"),
            Framing::TooLarge
        );
        assert_eq!(f("Content-Length: 2000000"), Framing::TooLarge);
        assert_eq!(f("Transfer-Encoding: chunked"), Framing::Chunked);
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "GET\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\nc\r\n\r\n",
            "GET / FTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse("PRI * HTTP/2.0\r\n\r\n").unwrap_err(),
            HeadError::Version
        );
        assert!(Request::parse(b"\xff\xfe / HTTP/1.1\r\n\r\n").is_err());
        let many: String = (0..150).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            HeadError::TooManyHeaders
        );
        let (m, t) = lossy_request_line(b"\xffGET /x\x00y HTTP/1.1\r\n");
        assert_eq!(m, "\u{fffd}GET");
        assert!(t.starts_with("/x\\") && !t.contains('\0'), "{t}");
    }
}
