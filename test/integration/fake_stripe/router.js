'use strict';
// Minimal method + path router: patterns like "/v1/customers/:id". A route
// may carry options for the pipeline (e.g. how its requests authenticate).

class Router {
  constructor() {
    this.routes = [];
  }

  add(method, pattern, handler, options = {}) {
    const names = [];
    const source = pattern.replace(/:([a-z_]+)/g, (_, name) => {
      names.push(name);
      return '([^/]+)';
    });
    this.routes.push({ method, pattern, regex: new RegExp(`^${source}$`), names, handler, options });
    return this;
  }

  // {handler, params, options, pattern} for the first matching route, or null
  // (also for a malformed %-escape, which no route can match).
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
      return { handler: route.handler, params, options: route.options, pattern: route.pattern };
    }
    return null;
  }
}

module.exports = { Router };
