'use strict';
// Minimal method + path router: patterns like "/v1/customers/:id".

class Router {
  constructor() {
    this.routes = [];
  }

  add(method, pattern, handler) {
    const names = [];
    const source = pattern.replace(/:([a-z_]+)/g, (_, name) => {
      names.push(name);
      return '([^/]+)';
    });
    this.routes.push({ method, regex: new RegExp(`^${source}$`), names, handler });
    return this;
  }

  // {handler, params} for the first matching route, or null (also for a
  // malformed %-escape, which no route can match).
  match(method, path) {
    for (const route of this.routes) {
      if (route.method !== method) continue;
      const m = route.regex.exec(path);
      if (!m) continue;
      const params = {};
      try {
        route.names.forEach((name, i) => { params[name] = decodeURIComponent(m[i + 1]); });
      } catch {
        return null;
      }
      return { handler: route.handler, params };
    }
    return null;
  }
}

module.exports = { Router };
