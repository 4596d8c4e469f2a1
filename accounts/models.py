"""People who sign in to the gateway, each with exactly one role."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class Role(models.TextChoices):
    DOCTOR = "doctor", "Doctor"
    NURSE = "nurse", "Nurse"
    ADMIN_STAFF = "admin_staff", "Administrative staff"
    DEVICE = "device", "Imaging device"
    AUDITOR = "auditor", "Auditor"
    IT_ADMIN = "it_admin", "IT administrator"


class User(AbstractUser):
    """A person or device account; the role decides what the policy allows."""

    role = models.CharField(max_length=16, choices=Role.choices)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="accounts_user_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.username} ({self.get_role_display()})"
