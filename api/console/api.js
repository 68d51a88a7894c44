// The console's only way to the service: GraphQL over POST /graphql, and subscriptions
// over /graphql/ws (graphql-transport-ws). The token lives in sessionStorage, never in a URL.

const TOKEN_KEY = "tenantflow.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value.trim().replace(/^Bearer\s+/i, ""));
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/// A refusal the pages show as it is: `code` is the API's reason code
/// (`unauthenticated`, `forbidden`, `feature_disabled`, ...), `flag` names a disabled feature.
export class ApiError extends Error {
  constructor(message, code, extra = {}) {
    super(message);
    this.code = code;
    this.flag = extra.flag;
    this.status = extra.status;
  }
}

/// Runs one operation; resolves to its data, or rejects with the first error as an ApiError.
export async function gql(query, variables = {}) {
  const { data, errors } = await request(query, variables);
  if (errors && errors.length) {
    const e = errors[0];
    const ext = e.extensions || {};
    throw new ApiError(e.message, ext.code || "error", { flag: ext.flag });
  }
  return data;
}

/// Runs one operation; resolves to `{data, errors}` as the API answered (partial data kept).
export async function request(query, variables = {}) {
  let response;
  try {
    response = await fetch("/graphql", {
      method: "POST",
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${token() || ""}`,
      },
      body: JSON.stringify({ query, variables }),
    });
  } catch (e) {
    throw new ApiError("the service cannot be reached", "unreachable");
  }
  let body;
  try {
    body = await response.json();
  } catch (e) {
    throw new ApiError(`the service answered ${response.status}`, "error", { status: response.status });
  }
  if (response.status === 401) {
    const message = (body.errors && body.errors[0] && body.errors[0].message) || "sign in again";
    throw new ApiError(message, "unauthenticated", { status: 401 });
  }
  return body;
}

/// A graphql-transport-ws subscription. `onData` gets each `next` payload's data, `onState`
/// the socket's state ("connecting", "live", "closed", "forbidden"). Returns a function that
/// stops it. The socket is opened again (with backoff) when it drops.
export function subscribe(query, variables, onData, onState = () => {}) {
  let socket;
  let stopped = false;
  let delay = 500;
  const open = () => {
    if (stopped) return;
    onState("connecting");
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql/ws`;
    socket = new WebSocket(url, "graphql-transport-ws");
    socket.onopen = () => {
      socket.send(JSON.stringify({
        type: "connection_init",
        payload: { Authorization: `Bearer ${token() || ""}` },
      }));
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "connection_ack") {
        delay = 500;
        onState("live");
        socket.send(JSON.stringify({ id: "1", type: "subscribe", payload: { query, variables } }));
      } else if (message.type === "next" && message.payload && message.payload.data) {
        onData(message.payload.data);
      } else if (message.type === "ping") {
        socket.send(JSON.stringify({ type: "pong" }));
      }
    };
    socket.onclose = (event) => {
      if (stopped) return;
      if (event.code === 4403) {
        onState("forbidden");
        return;
      }
      onState("closed");
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 10000);
    };
  };
  open();
  return () => {
    stopped = true;
    if (socket) socket.close(1000, "page left");
  };
}
