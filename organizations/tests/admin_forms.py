"""What the admin's organization change page posts, for tests that save it as a browser would."""


def organization_change_form(
    organization, *, active: bool = True, roles: dict[int, str] | None = None, deleted=frozenset(), **changes
) -> dict:
    """The page's fields as they stand, with ``changes`` over them: an unticked *Active* is not sent,
    each membership keeps its role unless ``roles`` gives it another (by membership id), and those in
    ``deleted`` are marked for deletion."""
    roles = roles or {}
    members = list(organization.memberships.order_by("pk"))
    form = {
        "name": organization.name,
        "slug": organization.slug,
        "plan": organization.plan,
        "monthly_event_quota": organization.monthly_event_quota,
        "retention_days": organization.retention_days,
        "memberships-TOTAL_FORMS": str(len(members)),
        "memberships-INITIAL_FORMS": str(len(members)),
        **({"is_active": "on"} if active else {}),
    }
    for index, membership in enumerate(members):
        form.update(
            {
                f"memberships-{index}-id": membership.pk,
                f"memberships-{index}-organization": organization.pk,
                f"memberships-{index}-user": membership.user_id,
                f"memberships-{index}-role": roles.get(membership.pk, membership.role),
                **({f"memberships-{index}-DELETE": "on"} if membership.pk in deleted else {}),
            }
        )
    form.update(changes)
    return form
