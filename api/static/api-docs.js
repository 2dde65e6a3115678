// The API docs page: Swagger UI (vendored, api/static/vendor/swagger-ui/) drawing the server's OpenAPI document.
"use strict";

const root = document.getElementById("swagger-ui");
SwaggerUIBundle({
  url: root.dataset.url,
  domNode: root,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout", // no top bar: the gallery's header is the page's
  deepLinking: true,
  validatorUrl: null, // never send the document to validator.swagger.io
});
