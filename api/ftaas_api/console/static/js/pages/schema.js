// Reading the job-creation request's JSON schema (served by the API from the model it
// validates with), so the form offers exactly the methods, fields, bounds and defaults the
// server accepts, and follows it when the server changes.

/** ``node`` with its $ref followed and a nullable anyOf reduced to its non-null branches. */
function resolve(root, node) {
  if (!node) return null;
  if (node.$ref) return resolve(root, root.$defs[node.$ref.split("/").pop()]);
  const branches = (node.anyOf || []).filter((branch) => branch.type !== "null");
  if (branches.length === 1 && !node.properties) return { ...resolve(root, branches[0]), default: node.default };
  return node;
}

/** {type: hyperparameters schema} for each method the request accepts. */
export function methods(root) {
  const found = {};
  for (const spec of variants(root, root.properties.method)) {
    const type = spec.properties.type;
    for (const name of type.enum || [type.const]) {
      const inner = resolve(root, spec.properties[name]);
      const hyperparameters = inner && resolve(root, inner.properties.hyperparameters);
      found[name] = hyperparameters ? hyperparameters.properties : {};
    }
  }
  return found;
}

/** The object schemas a union (anyOf/oneOf, nested or not) may be, nulls left out. */
function variants(root, node) {
  const resolved = resolve(root, node);
  const branches = resolved.anyOf || resolved.oneOf;
  if (!branches) return resolved.type === "null" ? [] : [resolved];
  return branches.flatMap((branch) => variants(root, branch));
}

/** What a hyperparameter accepts: numbers (with bounds), "auto" or another constant,
 *  booleans, lists; and its default. */
export function describe(property) {
  const branches = (property.anyOf || [property]).filter((branch) => branch.type !== "null");
  const kind = { constants: [], boolean: false, list: false, number: null, integer: false, default: property.default };
  for (const branch of branches) {
    if (branch.const !== undefined) kind.constants.push(branch.const);
    else if (branch.enum) kind.constants.push(...branch.enum);
    else if (branch.type === "boolean") kind.boolean = true;
    else if (branch.type === "array") kind.list = true;
    else if (branch.type === "integer" || branch.type === "number") {
      kind.integer = branch.type === "integer";
      kind.number = {
        min: branch.minimum ?? branch.exclusiveMinimum,
        max: branch.maximum ?? branch.exclusiveMaximum,
        exclusiveMin: branch.exclusiveMinimum !== undefined,
      };
    }
  }
  return kind;
}

/** A short hint: the default and what else the field takes. */
export function hint(kind) {
  const parts = [`default ${kind.default === null || kind.default === undefined ? "none" : JSON.stringify(kind.default).replaceAll('"', "")}`];
  if (kind.number) {
    const { min, max, exclusiveMin } = kind.number;
    const what = kind.integer ? "whole number" : "number";
    parts.push(min !== undefined && max !== undefined ? `${what} ${exclusiveMin ? "above" : "from"} ${min} ${exclusiveMin ? "up to" : "to"} ${max}` : what);
  }
  if (kind.boolean) parts.push("true or false");
  if (kind.list) parts.push("comma-separated names");
  for (const constant of kind.constants) parts.push(`or “${constant}”`);
  return parts.join("; ");
}

/** The typed value of ``text`` for a field of ``kind``; undefined leaves the field out. */
export function parse(kind, text) {
  const value = text.trim();
  if (!value) return undefined;
  if (kind.constants.includes(value)) return value;
  if (kind.boolean && (value === "true" || value === "false")) return value === "true";
  if (kind.number && /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(value)) return Number(value);
  if (kind.list) return value.split(",").map((item) => item.trim()).filter(Boolean);
  return value; // the server says what is wrong with it, next to the field
}
